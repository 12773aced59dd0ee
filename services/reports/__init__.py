"""Reports: the usage log projected into PostgreSQL, and the Activity, cost and chargeback APIs."""
