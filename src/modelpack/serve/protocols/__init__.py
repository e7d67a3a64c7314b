"""One module per protocol, each over the inference core (`serve.core`).

`v2` is KServe V2 / Open Inference Protocol REST, `grpc_v2` the same protocol over gRPC, `tfserving`
TensorFlow Serving's REST API, `simple` the classic `/predict` route, and `ops` the operational routes
(metrics, the OpenAPI document, /docs). The HTTP handlers are named in `serve.routes`.
"""
