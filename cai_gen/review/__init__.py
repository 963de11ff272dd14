"""Expert review of routed pairs: route.py picks them at the end of a run (review_queue.jsonl), db.py keeps
verdicts in review.sqlite, server.py + page.html serve the review page, merge.py applies the verdicts
(reviewed/), exchange.py moves items and verdicts to and from JSONL/CSV. CLI: python -m cai_gen.review."""
