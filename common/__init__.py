"""The runtime every cellar job shares: settings, Kubernetes access, status, storage, database, logging."""
