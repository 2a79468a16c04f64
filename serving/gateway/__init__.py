"""The policy gateway: projects and their policies, scoped API keys, quotas, the decision
audit log and prompt/response evaluation. Transports call it; it never calls them."""
