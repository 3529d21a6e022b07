"""Health: asset checks over the warehouse, the health-check schedule and failure alerts."""
