"""An example for every command's --help, in one place (optimize, run and serve keep theirs in their
docstrings; push and pull in their epilogs)."""

from __future__ import annotations

EXAMPLES: dict[str, tuple[str, ...]] = {
    "stages": ("modelpack stages", "modelpack stages --json"),
    "inspect": ("modelpack inspect model.keras", "modelpack inspect build/pkg --json"),
    "verify": ("modelpack verify build/pkg", "modelpack verify build/pkg.mpk --pubkey keys/public.pem"),
    "pack": ("modelpack pack build/pkg -o build/pkg.mpk", "modelpack pack build/pkg -o pkg.mpk --encrypt --key-file model.key"),
    "predict": ("modelpack predict build/pkg --input x.npy", "modelpack predict build/pkg --input batch.npz -o out.npz"),
    "benchmark": ("modelpack benchmark build/pkg --baseline model.keras --eval-data eval.npz",
                  "modelpack benchmark build/pkg --batch-sizes 1,32 --fail-if 'onnx.p99_ms@1 > 20'"),
    "report": ("modelpack report build/pkg -o report.html",),
    "compare": ("modelpack compare build/float build/int8",),
    "deploy": ("modelpack deploy build/pkg --target docker -o deploy/docker",
               "modelpack deploy build/pkg --target k8s -o deploy/k8s --replicas 3 --image registry.example.com/m:1"),
    "keygen": ("modelpack keygen -o keys", "modelpack keygen -o keys --symmetric"),
    "sign": ("modelpack sign build/pkg --key keys/private.pem",),
    "discover": ("modelpack discover zk://zk1:2181/models",),
}


def epilog(name: str) -> str | None:
    lines = EXAMPLES.get(name)
    if not lines:
        return None
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
