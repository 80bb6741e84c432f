"""iptables rules: rendered as data (rules.py), applied in one batch (iptables.py)."""
