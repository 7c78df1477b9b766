# The book shop of examples/reviews.yaml as Terraform configuration: 75 % of calls to
# reviews v1 and 25 % to v2 (a canary), beta testers (header x-beta: true) always on v2,
# only productpage may call reviews, and the database behind a TCP route.
#
# The provider is built from this repository (`cargo build --release --bin
# terraform-provider-trellis`); point Terraform at it with dev_overrides (see the README's
# Terraform section), export TRELLIS_SERVER and TRELLIS_TOKEN, then `terraform apply`.

terraform {
  required_providers {
    trellis = {
      source = "trellis.dev/trellis/trellis"
    }
  }
}

# server_url, token and organization default to TRELLIS_SERVER, TRELLIS_TOKEN and the
# token's organization.
provider "trellis" {}

resource "trellis_mesh" "shop" {
  name           = "shop"
  default_access = "deny"
  mtls {
    mode = "STRICT"
  }
}

resource "trellis_service" "reviews" {
  mesh   = trellis_mesh.shop.name
  name   = "reviews"
  labels = { team = "books" }
  ports {
    name     = "http"
    port     = 9080
    protocol = "http"
  }
}

resource "trellis_service" "productpage" {
  mesh = trellis_mesh.shop.name
  name = "productpage"
  ports {
    port     = 9080
    protocol = "http"
  }
}

resource "trellis_service" "db" {
  mesh = trellis_mesh.shop.name
  name = "db"
  ports {
    port     = 5432
    protocol = "tcp"
  }
}

resource "trellis_http_route" "reviews" {
  mesh = trellis_mesh.shop.name
  name = "reviews"
  target_ref {
    service = trellis_service.reviews.name
  }
  # Beta testers always get v2.
  rules {
    matches {
      headers {
        name  = "x-beta"
        value = "true"
      }
    }
    backend_refs {
      service = trellis_service.reviews.name
      tags    = { version = "v2" }
    }
  }
  # Everyone else: the canary.
  rules {
    backend_refs {
      service = trellis_service.reviews.name
      tags    = { version = "v1" }
      weight  = 75
    }
    backend_refs {
      service = trellis_service.reviews.name
      tags    = { version = "v2" }
      weight  = 25
    }
    timeouts {
      request = "10s"
    }
    retry {
      attempts        = 2
      per_try_timeout = "2s"
      retry_on        = ["5xx", "connect-failure"]
    }
  }
}

resource "trellis_access_policy" "reviews_callers" {
  mesh = trellis_mesh.shop.name
  name = "reviews-callers"
  target_ref {
    service = trellis_service.reviews.name
  }
  rules {
    action = "Allow"
    from {
      service = trellis_service.productpage.name
    }
    to {
      methods = ["GET"]
      paths {
        type  = "PathPrefix"
        value = "/reviews"
      }
    }
  }
}

resource "trellis_tcp_route" "db" {
  mesh = trellis_mesh.shop.name
  name = "db"
  target_ref {
    service = trellis_service.db.name
  }
  backend_refs {
    service = trellis_service.db.name
    tags    = { role = "primary" }
  }
}

resource "trellis_circuit_breaker" "reviews" {
  mesh = trellis_mesh.shop.name
  name = "reviews"
  target_ref {
    service = trellis_service.reviews.name
  }
  thresholds {
    max_connections      = 100
    max_pending_requests = 50
    max_requests         = 200
  }
  outlier_detection {
    consecutive5xx       = 5
    interval             = "10s"
    base_ejection_time   = "30s"
    max_ejection_percent = 50
  }
}

resource "trellis_health_check" "reviews" {
  mesh = trellis_mesh.shop.name
  name = "reviews"
  target_ref {
    service = trellis_service.reviews.name
  }
  interval            = "10s"
  timeout             = "2s"
  unhealthy_threshold = 3
  healthy_threshold   = 1
  http {
    path = "/health"
  }
}

resource "trellis_rate_limit" "reviews" {
  mesh = trellis_mesh.shop.name
  name = "reviews"
  target_ref {
    service = trellis_service.reviews.name
  }
  local {
    requests = 100
    interval = "1s"
    burst    = 200
  }
}
