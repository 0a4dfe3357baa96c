"""Keras side of keras_compare.py: the study's IMP model (Table 1) in Keras, trained epoch by epoch on
command from the parent process. Runs in the throw-away TensorFlow venv, never in cifarlab's.

    python keras_imp.py --data SUBSET.npz --batch 64 --lr 0.001 --l2 1e-4 --threads 2 --seed 0

Protocol (stdin/stdout, one line each, replies prefixed with "@@ " and JSON-encoded):
    (startup)          -> @@ {"ready": true, "tensorflow": ..., "keras": ..., "params": ...}
    train EPOCH LR     -> @@ {"seconds": ..., "images": ..., "loss": ..., "acc": ...}
    eval               -> @@ {"seconds": ..., "images": ..., "val_acc": ...}
    quit

The data file holds uint8 NCHW arrays train_x, train_y, val_x, val_y (the parent's exact subset);
here they become NHWC float32 / 255 up front, as the study's Keras code would have done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def reply(obj: dict) -> None:
    sys.stdout.write("@@ " + json.dumps(obj) + "\n")
    sys.stdout.flush()


def imp_model(keras, l2: float):
    """IMP exactly as Table 1 (right): Conv-ELU x2, MaxPool, Dropout 0.1, Conv64-ELU, MaxPool, Dropout 0.2,
    Conv128-ELU, Conv256-ELU, MaxPool, Dropout 0.3, Flatten, Dense 10 softmax. 3x3 'same' convolutions,
    L2 on every conv kernel; Keras defaults otherwise (Glorot-uniform kernels, zero biases)."""
    from keras import layers, regularizers

    def conv(filters):
        return layers.Conv2D(filters, 3, padding="same", kernel_regularizer=regularizers.l2(l2))

    return keras.Sequential([
        keras.Input((32, 32, 3)),
        conv(32), layers.ELU(),
        conv(32), layers.ELU(),
        layers.MaxPooling2D(2), layers.Dropout(0.1),
        conv(64), layers.ELU(),
        layers.MaxPooling2D(2), layers.Dropout(0.2),
        conv(128), layers.ELU(),
        conv(256), layers.ELU(),
        layers.MaxPooling2D(2), layers.Dropout(0.3),
        layers.Flatten(),
        layers.Dense(10, activation="softmax"),
    ])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--eval-batch", type=int, default=1000)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--l2", type=float, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import tensorflow as tf

    # Before any op runs: same intra-op thread count as the torch side.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    keras.utils.set_random_seed(args.seed)
    d = np.load(args.data)
    x = (d["train_x"].transpose(0, 2, 3, 1).astype("float32") / 255.0)
    y = d["train_y"].astype("int64")
    vx = (d["val_x"].transpose(0, 2, 3, 1).astype("float32") / 255.0)
    vy = d["val_y"].astype("int64")

    model = imp_model(keras, args.l2)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=args.lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    reply({"ready": True, "tensorflow": tf.__version__, "keras": keras.__version__,
           "params": int(model.count_params()), "jit_compile": bool(model.jit_compile),
           "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
           "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
           "inter_op": tf.config.threading.get_inter_op_parallelism_threads()})

    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "train":
            epoch, lr = int(cmd[1]), float(cmd[2])
            model.optimizer.learning_rate.assign(lr)
            t0 = time.perf_counter()
            h = model.fit(x, y, batch_size=args.batch, epochs=epoch, initial_epoch=epoch - 1,
                          shuffle=True, verbose=0)
            sec = time.perf_counter() - t0
            reply({"seconds": sec, "images": len(x), "loss": float(h.history["loss"][-1]),
                   "acc": float(h.history["accuracy"][-1])})
        elif cmd[0] == "eval":
            t0 = time.perf_counter()
            p = model.predict(vx, batch_size=args.eval_batch, verbose=0)
            sec = time.perf_counter() - t0
            reply({"seconds": sec, "images": len(vx), "val_acc": float((p.argmax(1) == vy).mean())})
        elif cmd[0] == "quit":
            break
        else:
            reply({"error": f"unknown command {cmd[0]!r}"})


if __name__ == "__main__":
    main()
