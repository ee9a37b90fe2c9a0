"""A generated sequence dataset for the README walk-through: a few thousand users whose behaviours
are Korean, Japanese and English store names, products, apps and searches, in time order.

Users follow personas (a language and a few interests), so the data has the structure real
behaviour has: a Task can learn who is a runner or a gamer from it. Deterministic for a seed.
"""

from __future__ import annotations

import random

from userlens.storage.objectstore import ObjectStore

SAMPLE_BUCKET = "sample"
SAMPLE_KEY = "sequences/users.csv"

INTERESTS: dict[str, dict[str, list[str]]] = {
    "running": {
        "ko": ["나이키 러닝화 페가수스", "아디다스 울트라부스트", "러닝 양말 3팩", "스마트워치 가민 포러너", "마라톤 대회 신청", "스포츠 음료 파워에이드"],
        "ja": ["ナイキ ランニングシューズ", "アシックス ゲルカヤノ", "ランニングウォッチ", "東京マラソン エントリー", "スポーツドリンク アクエリアス"],
        "en": ["Nike Pegasus running shoes", "Garmin Forerunner 265", "marathon training plan", "Strava app", "running socks 3 pack"],
    },
    "gaming": {
        "ko": ["닌텐도 스위치 OLED", "젤다의 전설 왕국의 눈물", "게이밍 마우스 로지텍", "PC방 이용권", "플레이스테이션 5 듀얼센스"],
        "ja": ["ニンテンドースイッチ", "ポケモン GO", "モンスターハンター ワイルズ", "ゲーミングヘッドセット", "プレイステーション5"],
        "en": ["Nintendo Switch OLED", "Steam Deck 512GB", "Elden Ring", "gaming mouse Logitech G Pro", "Twitch app"],
    },
    "beauty": {
        "ko": ["설화수 자음생 크림", "이니스프리 그린티 세럼", "올리브영 판교점", "쿠션 팩트 21호", "선크림 SPF50"],
        "ja": ["資生堂 アネッサ 日焼け止め", "無印良品 化粧水", "マツモトキヨシ 新宿店", "リップクリーム", "ファンデーション"],
        "en": ["Sephora", "The Ordinary niacinamide serum", "sunscreen SPF 50", "La Roche-Posay moisturizer", "lipstick matte red"],
    },
    "coffee": {
        "ko": ["스타벅스 판교점", "아메리카노 톨 사이즈", "이디야커피", "원두 1kg 에티오피아", "캡슐커피 네스프레소"],
        "ja": ["スターバックス板橋アベニューフラン店", "ドトールコーヒー", "コーヒー豆 ブラジル", "タリーズコーヒー"],
        "en": ["Starbucks Reserve", "cold brew coffee", "Blue Bottle Coffee", "espresso machine Breville", "oat milk latte"],
    },
    "travel": {
        "ko": ["제주항공 김포 제주", "에어비앤비 부산 해운대", "여행자 보험", "캐리어 24인치", "인천공항 면세점"],
        "ja": ["JAL 羽田 那覇", "楽天トラベル", "新幹線 東京 大阪", "スーツケース", "京都 旅館"],
        "en": ["Expedia flights Seoul", "Airbnb Tokyo Shibuya", "travel insurance", "carry-on suitcase", "Booking.com"],
    },
    "baby": {
        "ko": ["하기스 기저귀 4단계", "분유 앱솔루트", "유모차 부가부", "아기 물티슈 10팩", "육아 앱 베이비타임"],
        "ja": ["パンパース おむつ", "ベビーカー", "粉ミルク ほほえみ", "赤ちゃん本舗", "ベビー服 西松屋"],
        "en": ["Pampers diapers size 4", "baby stroller", "infant formula", "baby wipes", "Babylist registry"],
    },
}
LANGS = ("ko", "ja", "en")
COMMON = {
    "ko": ["네이버 쇼핑", "카카오톡", "쿠팡 로켓배송", "배달의민족", "유튜브"],
    "ja": ["ヤフーショッピング", "LINE", "Amazon.co.jp", "メルカリ", "YouTube"],
    "en": ["Amazon", "YouTube", "Google Maps", "Netflix", "Spotify"],
}


def generate(n_users: int = 3000, seed: int = 7) -> tuple[str, dict[str, list[str]]]:
    """The dataset as text, and each user's interests (the ground truth behind the behaviours)."""
    rng = random.Random(seed)
    lines = []
    truth: dict[str, list[str]] = {}
    names = list(INTERESTS)
    for i in range(n_users):
        user_id = f"u{100000 + i}"
        lang = rng.choices(LANGS, weights=(5, 3, 2))[0]
        interests = rng.sample(names, rng.choice((1, 1, 2, 3)))
        truth[user_id] = interests
        seq = behaviours(rng, lang, interests)
        lines.append(f"{user_id}\t{'->'.join(seq)}")
    return "\n".join(lines) + "\n", truth


def behaviours(rng: random.Random, lang: str, interests: list[str]) -> list[str]:
    """8-40 behaviours of a persona: 70% from its interests (mostly in its language), 15% everyday
    apps and shops, 15% noise from any interest (also used by the synthetic reference panel)."""
    names = list(INTERESTS)
    seq = []
    for _ in range(rng.randint(8, 40)):
        r = rng.random()
        if r < 0.7:
            pool = INTERESTS[rng.choice(interests)]
            l2 = lang if rng.random() < 0.85 else rng.choice(LANGS)
            seq.append(rng.choice(pool[l2]))
        elif r < 0.85:
            seq.append(rng.choice(COMMON[lang]))
        else:
            seq.append(rng.choice(INTERESTS[rng.choice(names)][lang]))
    return seq


def install(store: ObjectStore, n_users: int = 3000) -> bool:
    """Writes the sample bucket if it is not there yet. Returns whether it wrote anything."""
    store.create_bucket(SAMPLE_BUCKET)
    if store.exists(SAMPLE_BUCKET, SAMPLE_KEY):
        return False
    text, truth = generate(n_users)
    store.write_bytes(SAMPLE_BUCKET, SAMPLE_KEY, text.encode("utf-8"))
    labels = "".join(f"{u}\t{1 if 'running' in ints else 0}\n" for u, ints in truth.items())
    store.write_bytes(SAMPLE_BUCKET, "answers/running.csv", labels.encode("utf-8"))
    return True
