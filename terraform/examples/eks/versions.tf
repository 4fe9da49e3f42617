terraform {
  required_version = ">= 1.9.0"

  required_providers {
    # terraform-aws-modules/eks 21.x and vpc 6.x need hashicorp/aws >= 6.28.
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.28"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.38"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.1"
    }
  }
}
