"""Dagster automation: sensors and schedules that act on their own (inbox, online learning, schedules)."""
