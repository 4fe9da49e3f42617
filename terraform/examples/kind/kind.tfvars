# terraform apply -var-file=kind.tfvars, after `kind create cluster --config kind-cluster.yaml`
# (a cluster named llmops: context kind-llmops).
kubeconfig_path = "~/.kube/config"
kube_context    = "kind-llmops"
environments    = ["staging", "production"]
