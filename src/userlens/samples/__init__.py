"""Sample data shipped with userlens (generated deterministically, so nothing is downloaded)."""
