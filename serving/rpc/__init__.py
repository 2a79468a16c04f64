"""gRPC servicers only: KServe v2, modserve.v1.Moderation, health."""
