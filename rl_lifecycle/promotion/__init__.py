"""Champion/challenger promotion: gate policy, pure gates, the append-only audit and the use cases."""
