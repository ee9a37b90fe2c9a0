"""NCLUE Custom Attributes: score every user of a Feature against a set of keywords.

`keyword_set` is at most 1,000 characters, keywords separated by `\\n` (responses join them with `,`).
Each keyword is embedded by the Feature's own model as a one-behaviour sequence, so keywords and
users share one vector space. Keywords combine with AND into one direction, the normalised sum of
their vectors; a user's score is the cosine between the user and that direction, high only when the
user is close to all the keywords together. (Measured on MovieLens-100K with `ul-sem-v1`: the sum
ranked users who match two genres at once better than the minimum of the per-keyword cosines,
AUC 0.79-0.87 against 0.69-0.83; see bench/custom_attributes_quality.py.) For keywords to match by
meaning rather than by shared words, make the Feature with `nclue_model: "ul-sem-v1"`. The result
TSV (same naming rule as Runs) has the header `user_id<TAB>score` and one line per user.
"""

from __future__ import annotations

import numpy as np

from userlens.errors import InvalidParameter
from userlens.storage.db import utcnow
from userlens.understanding import outputs
from userlens.understanding.features import FeatureService
from userlens.understanding.model_registry import get_model
from userlens.understanding.models import CustomAttributes, Feature
from userlens.understanding.scoring import ScoreFileService, check_result_location
from userlens.understanding.validation import check_name

JOB_KIND = "nclue.custom_attributes"
MAX_KEYWORD_SET = 1000


def parse_keyword_set(value: object) -> list[str]:
    if not isinstance(value, str) or not value.strip():
        raise InvalidParameter("keyword_set is required: keywords separated by \\n")
    if len(value) > MAX_KEYWORD_SET:
        raise InvalidParameter(f"keyword_set is {len(value)} characters; at most {MAX_KEYWORD_SET}")
    keywords = [k.strip() for k in value.split("\n") if k.strip()]
    if any("," in k for k in keywords):
        raise InvalidParameter("keywords cannot contain ',' (responses list keywords separated by ',')")
    return keywords


def and_direction(keyword_vectors: np.ndarray) -> np.ndarray:
    """The AND of the keywords: the normalised sum of their vectors (one direction for all)."""
    total = keyword_vectors.astype(np.float32).sum(axis=0)
    norm = float(np.linalg.norm(total))
    return total / norm if norm > 0 else total


def and_scores(user_vectors: np.ndarray, keyword_vectors: np.ndarray) -> np.ndarray:
    """A user's score: the cosine between the user (L2-normalised) and the keywords' AND direction."""
    return user_vectors @ and_direction(keyword_vectors)


class AndScorer:
    """Scores a block of users against the keywords (an object, not a closure: Ray pickles it)."""

    def __init__(self, keyword_vectors: np.ndarray):
        self.keyword_vectors = keyword_vectors

    def __call__(self, block) -> np.ndarray:
        return and_scores(block.matrix(), self.keyword_vectors)


class CustomAttributesService(ScoreFileService):
    model = CustomAttributes
    kind = JOB_KIND
    label = "Custom Attributes profile"
    storage_folder = "custom-attributes"  # the attempt's TSV pieces, until they are composed

    def __init__(self, deps, features: FeatureService):
        super().__init__(deps)
        self.features = features
        features.dependent_checks.append(lambda s, fid: self.active_where(s, CustomAttributes.feature_id == fid))

    def create(self, account_id: str, body: dict) -> CustomAttributes:
        d = self.deps
        name = check_name(body.get("name"))
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
        keywords = parse_keyword_set(body.get("keyword_set"))
        path = check_result_location(d, body.get("result_bucket"), body.get("result_file_path"))
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
            feature = self.features.require_completed(s, account_id, body.get("feature_id"), "feature_id")
            row_id = self.new_id()
            job = self.submit(s, account_id, row_id)
            row = CustomAttributes(
                id=row_id, account_id=account_id, name=name, job_id=job.id, feature_id=feature.id, feature_name=feature.name,
                keywords=keywords, result_bucket=body["result_bucket"], result_file_path=outputs.result_object_key(path, utcnow()), created_at=job.created_at,
            )
            return self.add(s, row)

    def scorer(self, row: CustomAttributes, feature: Feature):
        keyword_vectors = get_model(feature.model_name).encode_texts(list(row.keywords)).astype(np.float32)
        return AndScorer(keyword_vectors)
