"""End-to-end tests on a real Kubernetes control plane (local, or KUBEFAL_E2E_KUBECONFIG)."""
