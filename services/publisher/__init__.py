"""The publisher: billable usage into a durable queue, and a sender to the billing server."""
