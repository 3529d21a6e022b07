"""Market data partitioned by trading day: daily bars and adjustment factors, their jobs,
schedules and sensors."""
