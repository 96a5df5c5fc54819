"""Who may call, and how much: token format, authentication with a validation cache, quotas."""
