"""Which head for MNET: global average pooling or flatten, before the new dense layer?

Embeds a class-balanced CIFAR-10 subset once with the pretrained frozen MobileNet v1 at 128 px, then
trains both heads on the same embeddings (no augmentation) and prints validation accuracy per epoch.

    python benchmarks/mnet_head.py --data ../shared/data/cifar10-jpeg.tar.gz \\
        --weights ../shared/data/pretrained/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite
"""

from __future__ import annotations

import argparse

import torch

from cifarlab.config import resolve_config
from cifarlab.data import class_balanced_subset, load_cifar10
from cifarlab.models import build_model
from cifarlab.models.predict import evaluate_model
from cifarlab.train.loop import embed_all, train_epoch
from cifarlab.train.progress import Progress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--train", type=int, default=5000, help="training images (class-balanced)")
    ap.add_argument("--val", type=int, default=2000, help="validation images (class-balanced)")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()

    data = load_cifar10(args.data)
    tr, va = class_balanced_subset(data.train_y, args.train), class_balanced_subset(data.val_y, args.val)
    cfg = resolve_config("mnet1", ["augment=null", f"weights={args.weights}"])
    model = build_model(cfg, torch.device("cpu"))
    f_train = embed_all(model, data.train_x[tr], 256, False, "embedding train subset")
    f_val = embed_all(model, data.val_x[va], 256, False, "embedding val subset")
    y_train, y_val = data.train_y[tr], data.val_y[va]

    print(f"\nMNET1 head on {args.train} train / {args.val} val images (CIFAR-10 JPEG q75 copy), "
          f"frozen v1 from {args.weights.split('/')[-1]}, no augmentation, Adam 1e-3, batch {cfg.batch_size}\n")
    print("| head | trainable params | " + " | ".join(f"ep {e}" for e in range(1, args.epochs + 1)) + " |")
    print("|---|---|" + "---|" * args.epochs)
    for head in ("avg", "flatten"):
        c = resolve_config("mnet1", ["augment=null", "weights=null", f"head={head}"])
        tail = build_model(c, torch.device("cpu")).tail_module()  # the head is all that trains
        opt = torch.optim.Adam([p for p in tail.parameters() if p.requires_grad], lr=c.lr)
        accs = []
        for epoch in range(1, args.epochs + 1):
            train_epoch(tail, opt, f_train, y_train, c, epoch, Progress(1, quiet=True))
            accs.append(evaluate_model(tail, f_val, y_val)[1])
        n = sum(p.numel() for p in tail.parameters() if p.requires_grad)
        print(f"| {head} | {n:,} | " + " | ".join(f"{a:.3f}" for a in accs) + " |", flush=True)


if __name__ == "__main__":
    main()
