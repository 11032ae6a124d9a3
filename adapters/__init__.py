"""The shared domain of skillserve: manifests, templates, datasets, the object store and the registry."""
