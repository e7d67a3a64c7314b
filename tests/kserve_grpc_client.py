"""The kserve SDK's own gRPC client, run as a separate process by tests/test_grpc.py.

kserve and tritonclient both register the protocol's messages in protobuf's default descriptor pool, so
they cannot be imported into one process. Usage: PORT [--tls CERT] [--key KEY]; prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--tls")
    parser.add_argument("--key")
    args = parser.parse_args()
    x = np.random.default_rng(5).standard_normal((3, 16)).astype("float32")  # tests/test_grpc.py's X
    headers = (("authorization", f"Bearer {args.key}"),) if args.key else ()
    tls = {"use_ssl": True, "root_certificates": args.tls} if args.tls else {}
    async with InferenceGRPCClient(f"localhost:{args.port}", **tls) as client:
        try:
            ready = await client.is_server_ready(headers=headers)  # public, key or not
            model_ready = await client.is_model_ready("mlp", headers=headers)
            tensor = InferInput("features", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            response = await client.infer(InferRequest(model_name="mlp", infer_inputs=[tensor], request_id="k-1"),
                                          headers=headers)
        except Exception as exc:  # the status the SDK surfaces, for the test to check
            print(json.dumps({"error": str(exc)}))
            return
    print(json.dumps({"ready": ready, "model_ready": model_ready, "id": response.id,
                      "logits": response.outputs[0].as_numpy().tolist()}))

if __name__ == "__main__":
    asyncio.run(main())
