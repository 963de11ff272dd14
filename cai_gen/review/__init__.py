"""Expert review of routed pairs: cai_gen/routing.py picks them at the end of a run (review_queue.jsonl), db.py keeps
verdicts in review.sqlite, auth.py invites reviewers and checks where requests come from, server.py + api.py +
page.* serve the (blind by default) review page, merge.py applies the verdicts (reviewed/) and measures
agreement, position bias and too-fast verdicts, exchange.py moves items and verdicts to and from JSONL/CSV
(--unblind), tasks.py + tools.py export blind tasks for Label Studio, Argilla, CSV or JSONL and import their
annotations, assign.py keeps serve --overlap's per-reviewer queues, render.py renders and sanitises answers.
CLI: python -m cai_gen.review."""
