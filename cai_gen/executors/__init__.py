"""Where generation runs when not in this process: ray.py (Ray Data over engine replicas)."""
