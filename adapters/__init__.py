"""The shared domain of skillserve: manifests, templates, datasets, the object store, the registry and graders."""
