"""End-to-end tests against a real Kubernetes control plane (local, or any cluster by KUBEFAL_E2E_KUBECONFIG)."""
