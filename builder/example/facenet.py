"""The built-in FaceNet example: the artefacts the builder exists to convert, made on the spot.

WHY: the canonical hard case for tfs-builder is a FaceNet (davidsandberg/facenet) release: a TF1
*training* MetaGraph whose embeddings only come out right with ``phase_train=False`` fed, whose
``input`` is not a placeholder but an Identity behind a queue-based input pipeline (with PyFunc
and ReadFile ops in it), and whose batch norm sits behind ``Switch``/``Merge`` conditionals with
ref variables. The release weights cannot be fetched here (the network reaches only package
registries), so this module writes a network with the same published architecture (Inception-ResNet-v1, Szegedy et
al. 2016, as FaceNet configures it) and the same awkward interface, with seeded weights.

What is written (all three formats the FaceNet tutorials hand to a serving pipeline)::

    OUT/checkpoint/model-20180402-114759.meta             training MetaGraph (export_meta_graph)
    OUT/checkpoint/model-20180402-114759.ckpt-275.index   + .data-00000-of-00001 (Saver over the
    OUT/checkpoint/checkpoint                               trainable collection, as FaceNet does)
    OUT/frozen/facenet.pb        frozen the way FaceNet's freeze_graph.py does it
    OUT/savedmodel/              TF1 SavedModel, tag "serve", "serving_default" signature

Faithfulness notes that the rest of the builder relies on:

* ``input`` is ``Identity(Identity(QueueDequeueUpToV2(batch_join/fifo_queue, batch_size)))``,
  exactly like FaceNet's ``train_softmax.py``; inference feeds ``input:0`` directly, as
  FaceNet's ``compare.py`` does. ``phase_train`` (bool) and ``batch_size`` (int32) are
  placeholders without defaults or shapes.
* The frozen graph is what FaceNet's ``freeze_graph.py`` produces: RefSwitch/AssignSub/AssignAdd
  rewritten, variables under ``InceptionResnetV1`` turned into constants, everything the
  ``embeddings`` node reaches is kept. That still includes ``batch_join/fifo_queue`` (FIFOQueueV2),
  ``QueueDequeueUpToV2`` and the ``batch_size``/``phase_train`` placeholders: the released
  ``20180402-114759.pb`` has them too (coremltools#737, facenet PR #240). The PyFunc/ReadFile ops
  are on the enqueue side, so they are not in the frozen graph; they are in the MetaGraph and in
  the SavedModel.
* The SavedModel is the naive tutorial export (import MetaGraph, restore, SavedModelBuilder): it
  holds the whole training graph (input pipeline, softmax head, loss), and its signature has
  ``images`` -> ``input:0`` *and* ``phase_train`` -> ``phase_train:0`` inputs, because the
  graph cannot run without that feed.
  Folding ``phase_train=False`` and pruning is the builder's job, not this file's.
* Batch-norm statistics are not trivial: betas ~N(0, 0.1), and ``initialize_facenet`` measures
  the moving means/variances on seeded probe images in training mode, then perturbs them per
  channel, so inference behaves sanely (unrelated inputs give unrelated embeddings) while
  feeding ``phase_train=True`` gives visibly different embeddings. Conv weights use a He-scaled
  truncated normal (FaceNet's stddev 0.1 only works once training has fitted the statistics).

TensorFlow is imported inside functions so ``python -m builder --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from builder.core import log
from builder.core.errors import InputError
from builder.options import as_bool, as_int, as_list

_LOG = log.get(__name__)
MODEL_NAME = "20180402-114759"  # FaceNet's VGGFace2 release name, fixed for reproducibility
CHECKPOINT_STEP = 275  # the step of that release's checkpoint
FORMATS = ("checkpoint", "frozen", "savedmodel")
FROZEN_FILE = "facenet.pb"
SIGNATURE_KEY = "serving_default"
SAVEDMODEL_TAG = "serve"

# FaceNet's batch-norm and dropout settings (models/inception_resnet_v1.py, train_softmax.py).
BN_DECAY = 0.995
BN_EPSILON = 0.001
KEEP_PROBABILITY = 0.8
# How far ``initialize_facenet`` moves the measured batch-norm statistics (see its docstring).
BN_MEAN_JITTER = 0.1  # per-channel mean shift, in standard deviations
BN_VARIANCE_RANGE = (0.8, 1.25)  # per-channel variance factor, uniform

# Bits of FaceNet's per-image ``control`` input that switch augmentations on.
RANDOM_ROTATE = 1
RANDOM_FLIP = 4
FIXED_STANDARDIZATION = 8


@dataclass(frozen=True)
class Architecture:
    """Widths and depths of Inception-ResNet-v1. ``FULL`` is FaceNet's; ``TINY`` keeps every op
    and scope (1 block per stage) with a handful of channels so unit tests run in a second."""

    image_size: int
    embedding_size: int
    stem: tuple[int, int, int, int, int, int]  # Conv2d_1a, 2a, 2b, 3b, 4a, 4b
    block35: tuple[int, int]  # (repeats, branch width); scale 0.17
    reduction_a: tuple[int, int, int, int]  # FaceNet's (k, l, m, n)
    block17: tuple[int, int]  # scale 0.10
    reduction_b: tuple[int, int, int, int]  # (1x1 width, branch 0 out, branch 1 out, branch 2 out)
    block8: tuple[int, int]  # scale 0.20, plus one final Block8 without activation
    num_classes: int  # width of the training-only softmax head ("Logits")
    preprocess_threads: int


FULL = Architecture(
    image_size=160, embedding_size=512, stem=(32, 32, 64, 80, 192, 256), block35=(5, 32),
    reduction_a=(192, 192, 256, 384), block17=(10, 128), reduction_b=(256, 384, 256, 256),
    block8=(5, 192), num_classes=128, preprocess_threads=4,
)
TINY = Architecture(
    image_size=80, embedding_size=16, stem=(8, 8, 16, 16, 24, 32), block35=(1, 8),
    reduction_a=(16, 16, 24, 24), block17=(1, 16), reduction_b=(16, 24, 16, 16),
    block8=(1, 24), num_classes=8, preprocess_threads=2,
)


def min_image_size() -> int:
    """Smallest input side the stem and both VALID stride-2 reductions accept (75 pixels)."""
    return next(n for n in range(1, 1000) if _final_spatial(n) >= 1)


def _final_spatial(n: int) -> int:
    """Spatial side after the network's VALID convolutions/pools, or 0 if one of them underflows."""

    def valid(size: int, k: int, s: int) -> int:
        return (size - k) // s + 1 if size >= k else 0

    for k, s in ((3, 2), (3, 1), (3, 2), (3, 1), (3, 2), (3, 2), (3, 2)):  # 1a 2a pool 4a 4b 6a 7a
        n = valid(n, k, s)
    return n


def architecture(*, tiny: bool = False, image_size: int | None = None,
                 embedding_size: int | None = None) -> Architecture:
    """FULL or TINY with optional size overrides, validated so TF never sees a negative size."""
    arch = TINY if tiny else FULL
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or \
                _final_spatial(image_size) < 1:
            raise InputError(f"image_size {image_size!r} is too small for Inception-ResNet-v1: "
                             f"use an integer >= {min_image_size()} (FaceNet uses 160)")
        arch = replace(arch, image_size=image_size)
    if embedding_size is not None:
        if isinstance(embedding_size, bool) or not isinstance(embedding_size, int) or \
                embedding_size < 2:
            raise InputError(f"embedding_size {embedding_size!r} is not a usable width: "
                             "use an integer >= 2 (FaceNet uses 512)")
        arch = replace(arch, embedding_size=embedding_size)
    return arch


@contextlib.contextmanager
def _v1_control_flow() -> Iterator[None]:
    """FaceNet's graphs use TF1 control flow (Switch/Merge), and TF2 builds If ops by default.

    TF decides per ``tf.cond`` call from a process-wide flag, so it is switched off only while our
    graph is built and restored afterwards (not thread-safe: don't build graphs concurrently).
    """
    import tensorflow as tf

    was_v2 = tf.compat.v1.control_flow_v2_enabled()
    tf.compat.v1.disable_control_flow_v2()
    try:
        yield
    finally:
        if was_v2:
            tf.compat.v1.enable_control_flow_v2()


class _Net:
    """Layer helpers that name ops and variables the way TF-slim did in FaceNet's graph."""

    def __init__(self, phase_train: Any) -> None:
        import tensorflow as tf

        self.tf = tf
        self.v1 = tf.compat.v1
        self.phase_train = phase_train
        self.weights: list[Any] = []  # trainable parameters (conv/fc weights, biases, betas)
        # (moving_mean, moving_variance, batch mean, batch variance) per batch-norm layer; the
        # batch tensors are only meaningful when run with phase_train=True.
        self.batch_norms: list[tuple[Any, Any, Any, Any]] = []

    def _weight(self, name: str, shape: list[int]) -> Any:
        v1 = self.v1
        var = v1.get_variable(name, shape, initializer=v1.variance_scaling_initializer(
            scale=2.0, mode="fan_in", distribution="truncated_normal"))
        self.weights.append(var)
        return var

    def batch_norm(self, x: Any) -> Any:
        """slim.batch_norm as FaceNet configures it: no gamma, decay 0.995, eps 1e-3, and
        ``updates_collections=None`` -- the moving averages are updated in place inside a second
        conditional, and the moving statistics live in the TRAINABLE_VARIABLES collection so
        FaceNet's ``Saver(tf.trainable_variables())`` saves them."""
        tf, v1 = self.tf, self.v1
        channels = int(x.shape[-1])
        is_2d = x.shape.rank == 2
        stat_collections = [v1.GraphKeys.GLOBAL_VARIABLES, v1.GraphKeys.MODEL_VARIABLES,
                            v1.GraphKeys.TRAINABLE_VARIABLES]
        with v1.variable_scope("BatchNorm"):
            beta = v1.get_variable("beta", [channels],
                                   initializer=v1.random_normal_initializer(0.0, 0.1))
            moving_mean = v1.get_variable(
                "moving_mean", [channels], initializer=v1.random_normal_initializer(0.0, 0.5),
                trainable=False, collections=stat_collections)
            moving_variance = v1.get_variable(
                "moving_variance", [channels],
                initializer=v1.random_uniform_initializer(0.5, 2.0),
                trainable=False, collections=stat_collections)
            self.weights.append(beta)
            x4 = tf.reshape(x, [-1, 1, 1, channels]) if is_2d else x
            gamma = tf.constant(1.0, shape=[channels])

            def training() -> tuple[Any, Any, Any]:
                return v1.nn.fused_batch_norm(x4, gamma, beta, epsilon=BN_EPSILON,
                                              is_training=True)

            def inference() -> tuple[Any, Any, Any]:
                return v1.nn.fused_batch_norm(x4, gamma, beta, mean=moving_mean,
                                              variance=moving_variance, epsilon=BN_EPSILON,
                                              is_training=False)

            y, mean, variance = v1.cond(self.phase_train, training, inference)
            self.batch_norms.append((moving_mean, moving_variance, mean, variance))

            def force_updates() -> Any:
                # assign_sub on the ref variable is what puts RefSwitch/AssignSub in the graph,
                # the nodes FaceNet's freeze_graph.py has to rewrite.
                update_mean = v1.assign_sub(moving_mean, (moving_mean - mean) * (1.0 - BN_DECAY))
                update_var = v1.assign_sub(moving_variance,
                                           (moving_variance - variance) * (1.0 - BN_DECAY))
                with tf.control_dependencies([update_mean, update_var]):
                    return tf.identity(y)

            y = v1.cond(self.phase_train, force_updates, lambda: y)
            return tf.reshape(y, [-1, channels]) if is_2d else y

    def conv(self, x: Any, filters: int, kernel: int | tuple[int, int], scope: str, *,
             stride: int = 1, padding: str = "SAME", normalize: bool = True,
             relu: bool = True) -> Any:
        """slim.conv2d under FaceNet's arg_scope: conv -> batch norm -> ReLU; the residual "up"
        projections (``normalize=False, relu=False``) get biases instead of batch norm."""
        tf, v1 = self.tf, self.v1
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        with v1.variable_scope(scope):
            w = self._weight("weights", [kh, kw, int(x.shape[-1]), filters])
            y = tf.nn.conv2d(x, w, strides=[1, stride, stride, 1], padding=padding)
            if normalize:
                y = self.batch_norm(y)
            else:
                b = v1.get_variable("biases", [filters], initializer=v1.zeros_initializer())
                self.weights.append(b)
                y = tf.nn.bias_add(y, b)
            return tf.nn.relu(y) if relu else y

    def max_pool(self, x: Any, scope: str) -> Any:
        return self.tf.nn.max_pool2d(x, 3, 2, "VALID", name=f"{scope}/MaxPool")

    # -- Inception-ResNet blocks (Szegedy et al. 2016, figures 10, 11, 13 of the v1 variant) ----

    def residual(self, net: Any, scope: str, branches: list[list[tuple[int, Any, str]]],
                 scale: float, activation: bool) -> Any:
        tf, v1 = self.tf, self.v1
        with v1.variable_scope(scope):
            outs = []
            for i, branch in enumerate(branches):
                with v1.variable_scope(f"Branch_{i}"):
                    y = net
                    for width, kernel, name in branch:
                        y = self.conv(y, width, kernel, name)
                    outs.append(y)
            mixed = tf.concat(outs, axis=3)
            up = self.conv(mixed, int(net.shape[-1]), 1, "Conv2d_1x1", normalize=False,
                           relu=False)
            net = net + scale * up
            return tf.nn.relu(net) if activation else net

    def block35(self, net: Any, w: int, scope: str) -> Any:
        return self.residual(net, scope, [
            [(w, 1, "Conv2d_1x1")],
            [(w, 1, "Conv2d_0a_1x1"), (w, 3, "Conv2d_0b_3x3")],
            [(w, 1, "Conv2d_0a_1x1"), (w, 3, "Conv2d_0b_3x3"), (w, 3, "Conv2d_0c_3x3")],
        ], 0.17, True)

    def block17(self, net: Any, w: int, scope: str) -> Any:
        return self.residual(net, scope, [
            [(w, 1, "Conv2d_1x1")],
            [(w, 1, "Conv2d_0a_1x1"), (w, (1, 7), "Conv2d_0b_1x7"), (w, (7, 1), "Conv2d_0c_7x1")],
        ], 0.10, True)

    def block8(self, net: Any, w: int, scope: str, activation: bool = True) -> Any:
        return self.residual(net, scope, [
            [(w, 1, "Conv2d_1x1")],
            [(w, 1, "Conv2d_0a_1x1"), (w, (1, 3), "Conv2d_0b_1x3"), (w, (3, 1), "Conv2d_0c_3x1")],
        ], 0.20 if activation else 1.0, activation)

    def reduction_a(self, net: Any, k: int, l_: int, m: int, n: int) -> Any:
        v1 = self.v1
        with v1.variable_scope("Branch_0"):
            b0 = self.conv(net, n, 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
        with v1.variable_scope("Branch_1"):
            b1 = self.conv(net, k, 1, "Conv2d_0a_1x1")
            b1 = self.conv(b1, l_, 3, "Conv2d_0b_3x3")
            b1 = self.conv(b1, m, 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
        with v1.variable_scope("Branch_2"):
            b2 = self.max_pool(net, "MaxPool_1a_3x3")
        return self.tf.concat([b0, b1, b2], axis=3)

    def reduction_b(self, net: Any, mid: int, o0: int, o1: int, o2: int) -> Any:
        v1 = self.v1
        with v1.variable_scope("Branch_0"):
            b0 = self.conv(net, mid, 1, "Conv2d_0a_1x1")
            b0 = self.conv(b0, o0, 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
        with v1.variable_scope("Branch_1"):
            b1 = self.conv(net, mid, 1, "Conv2d_0a_1x1")
            b1 = self.conv(b1, o1, 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
        with v1.variable_scope("Branch_2"):
            b2 = self.conv(net, mid, 1, "Conv2d_0a_1x1")
            b2 = self.conv(b2, mid, 3, "Conv2d_0b_3x3")
            b2 = self.conv(b2, o2, 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
        with v1.variable_scope("Branch_3"):
            b3 = self.max_pool(net, "MaxPool_1a_3x3")
        return self.tf.concat([b0, b1, b2, b3], axis=3)

    def inception_resnet_v1(self, images: Any, arch: Architecture) -> Any:
        """Stem, 5x block35, reduction A, 10x block17, reduction B, 5x block8 + a final block8
        without activation, average pool, dropout, then the 512-wide bottleneck with batch norm
        and no bias (FaceNet's ``prelogits``)."""
        tf, v1 = self.tf, self.v1
        s = arch.stem
        with v1.variable_scope("InceptionResnetV1"):
            net = self.conv(images, s[0], 3, "Conv2d_1a_3x3", stride=2, padding="VALID")
            net = self.conv(net, s[1], 3, "Conv2d_2a_3x3", padding="VALID")
            net = self.conv(net, s[2], 3, "Conv2d_2b_3x3")
            net = self.max_pool(net, "MaxPool_3a_3x3")
            net = self.conv(net, s[3], 1, "Conv2d_3b_1x1", padding="VALID")
            net = self.conv(net, s[4], 3, "Conv2d_4a_3x3", padding="VALID")
            net = self.conv(net, s[5], 3, "Conv2d_4b_3x3", stride=2, padding="VALID")
            with v1.variable_scope("Repeat"):
                for i in range(arch.block35[0]):
                    net = self.block35(net, arch.block35[1], f"block35_{i + 1}")
            with v1.variable_scope("Mixed_6a"):
                net = self.reduction_a(net, *arch.reduction_a)
            with v1.variable_scope("Repeat_1"):
                for i in range(arch.block17[0]):
                    net = self.block17(net, arch.block17[1], f"block17_{i + 1}")
            with v1.variable_scope("Mixed_7a"):
                net = self.reduction_b(net, *arch.reduction_b)
            with v1.variable_scope("Repeat_2"):
                for i in range(arch.block8[0]):
                    net = self.block8(net, arch.block8[1], f"block8_{i + 1}")
            net = self.block8(net, arch.block8[1], "Block8", activation=False)
            with v1.variable_scope("Logits"):
                k = [int(net.shape[1]), int(net.shape[2])]
                net = tf.nn.avg_pool2d(net, k, 1, "VALID", name="AvgPool_1a_8x8/AvgPool")
                net = tf.reshape(net, [-1, int(net.shape[-1])], name="Flatten/Reshape")
                with v1.name_scope("Dropout"):
                    net = v1.cond(self.phase_train,
                                  lambda: tf.nn.dropout(net, rate=1.0 - KEEP_PROBABILITY),
                                  lambda: tf.identity(net))
            with v1.variable_scope("Bottleneck"):
                w = self._weight("weights", [int(net.shape[-1]), arch.embedding_size])
                net = self.batch_norm(tf.matmul(net, w))
        return net


def _random_rotate_image(image: np.ndarray) -> np.ndarray:
    """The Python side of the pipeline's PyFunc op (FaceNet rotates by a random angle with scipy;
    quarter turns keep this dependency-free). Only reached in training with RANDOM_ROTATE set."""
    return np.ascontiguousarray(np.rot90(image, k=int(np.random.randint(4))))


def _input_pipeline(tf: Any, arch: Architecture, batch_size: Any) -> dict[str, Any]:
    """FaceNet's queue pipeline: (path, label, control) rows are enqueued, preprocessing threads
    ReadFile + decode, optionally rotate through a PyFunc, crop/pad, standardise, and batch_join
    hands out up to ``batch_size`` images with ``dequeue_up_to``."""
    v1 = tf.compat.v1
    size = arch.image_size
    image_paths = v1.placeholder(tf.string, shape=(None, 1), name="image_paths")
    labels = v1.placeholder(tf.int32, shape=(None, 1), name="labels")
    control = v1.placeholder(tf.int32, shape=(None, 1), name="control")
    input_queue = v1.FIFOQueue(capacity=100000, dtypes=[tf.string, tf.int32, tf.int32],
                               shapes=[(1,), (1,), (1,)])
    enqueue_op = input_queue.enqueue_many([image_paths, labels, control], name="enqueue_op")

    def flag(ctrl: Any, bit: int) -> Any:
        return tf.equal(tf.bitwise.bitwise_and(ctrl, bit), bit)

    per_thread = []
    for _ in range(arch.preprocess_threads):
        filename, label, ctrl = input_queue.dequeue()
        image = tf.io.decode_png(tf.io.read_file(filename[0]), channels=3)
        image = v1.cond(flag(ctrl[0], RANDOM_ROTATE),
                        lambda image=image: v1.py_func(_random_rotate_image, [image], tf.uint8),
                        lambda image=image: tf.identity(image))
        image.set_shape([None, None, 3])
        image = tf.image.resize_with_crop_or_pad(image, size, size)
        image = v1.cond(flag(ctrl[0], RANDOM_FLIP),
                        lambda image=image: tf.image.random_flip_left_right(image),
                        lambda image=image: tf.identity(image))
        image = v1.cond(flag(ctrl[0], FIXED_STANDARDIZATION),
                        lambda image=image: (tf.cast(image, tf.float32) - 127.5) / 128.0,
                        lambda image=image: tf.image.per_image_standardization(image))
        image.set_shape([size, size, 3])
        per_thread.append([image, label[0]])
    image_batch, label_batch = v1.train.batch_join(
        per_thread, batch_size=batch_size, shapes=[(size, size, 3), ()],
        capacity=4 * arch.preprocess_threads * 100, allow_smaller_final_batch=True)
    return {"image_paths": image_paths, "labels": labels, "control": control,
            "enqueue_op": enqueue_op, "input_queue": input_queue, "image_batch": image_batch,
            "label_batch": label_batch}


def build_facenet_graph(graph: Any, *, tiny: bool = False, seed: int = 0,
                        image_size: int | None = None,
                        embedding_size: int | None = None) -> dict[str, Any]:
    """Build FaceNet's training graph into ``graph`` (a fresh ``tf.Graph``); nothing is run.

    Returns tensors/ops by role: ``input`` (an Identity: feed it), ``phase_train``,
    ``batch_size``, ``embeddings``, plus ``image_batch``, ``label_batch``, ``prelogits``,
    ``image_paths``, ``labels``, ``control``, ``enqueue_op``, ``input_queue`` (the FIFOQueue
    object, to close it), ``total_loss``, ``global_step``,
    ``saver`` (FaceNet's: the trainable collection, relative paths), ``parameters`` (network
    weights; BN statistics and the softmax head excluded) and ``batch_norms`` (for
    ``initialize_facenet``). Run ``initialize_facenet(sess, roles, seed=...)`` rather than a bare
    ``global_variables_initializer()`` to get the calibrated, non-trivial batch-norm statistics.

    The softmax head and loss are there because FaceNet's MetaGraph has them; the optimizer and
    its gradient ops are left out: they tripled build time and nothing downstream reads them.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    arch = architecture(tiny=tiny, image_size=image_size, embedding_size=embedding_size)
    _check_seed(seed, "seed")
    with graph.as_default(), _v1_control_flow(), \
            v1.variable_scope(v1.get_variable_scope(), use_resource=False):  # ref variables
        v1.set_random_seed(seed)
        global_step = v1.Variable(0, trainable=False, name="global_step", use_resource=False)
        batch_size = v1.placeholder(tf.int32, name="batch_size")
        phase_train = v1.placeholder(tf.bool, name="phase_train")
        pipeline = _input_pipeline(tf, arch, batch_size)
        image_batch = tf.identity(pipeline["image_batch"], "image_batch")
        images = tf.identity(image_batch, "input")
        label_batch = tf.identity(pipeline["label_batch"], "label_batch")

        net = _Net(phase_train)
        prelogits = net.inception_resnet_v1(images, arch)
        embeddings = v1.nn.l2_normalize(prelogits, 1, 1e-10, name="embeddings")

        with v1.variable_scope("Logits"):
            w = v1.get_variable("weights", [arch.embedding_size, arch.num_classes],
                                initializer=v1.glorot_uniform_initializer())
            b = v1.get_variable("biases", [arch.num_classes], initializer=v1.zeros_initializer())
            logits = tf.nn.bias_add(tf.matmul(prelogits, w), b)
        cross_entropy = tf.reduce_mean(v1.nn.sparse_softmax_cross_entropy_with_logits(
            labels=label_batch, logits=logits, name="cross_entropy_per_example"),
            name="cross_entropy")
        total_loss = tf.identity(cross_entropy, name="total_loss")
        saver = v1.train.Saver(v1.trainable_variables(), max_to_keep=3, save_relative_paths=True)
    parameters = sum(int(np.prod(v.shape)) for v in net.weights)
    return {
        "input": images, "phase_train": phase_train, "batch_size": batch_size,
        "embeddings": embeddings, "image_batch": image_batch, "label_batch": label_batch,
        "prelogits": prelogits, "total_loss": total_loss, "global_step": global_step,
        "saver": saver, "parameters": parameters, "batch_norms": net.batch_norms,
        "image_size": arch.image_size, "embedding_size": arch.embedding_size,
        **{k: pipeline[k] for k in ("image_paths", "labels", "control", "enqueue_op",
                                    "input_queue")},
    }


def _check_seed(seed: object, flag: str) -> int:
    return as_int(seed, flag, minimum=0, maximum=2**31 - 1, example=0)


def probe_images(n: int, image_size: int, seed: int = 0) -> np.ndarray:
    """Seeded face-sized stand-ins: smooth random colour fields plus a little noise, scaled like
    FaceNet's fixed standardisation ([-1, 1]). Smooth inputs give more image-like activation
    statistics than white noise, which matters for calibration and for parity checks."""
    rng = np.random.RandomState(seed)
    cells = 5
    k = -(-image_size // cells)
    low = rng.uniform(-1.0, 1.0, (n, cells, cells, 3))
    images = np.repeat(np.repeat(low, k, axis=1), k, axis=2)[:, :image_size, :image_size]
    images = images + rng.normal(0.0, 0.15, images.shape)
    return np.clip(images, -1.0, 1.0).astype(np.float32)


def initialize_facenet(sess: Any, roles: dict[str, Any], *, seed: int = 0) -> None:
    """Initialise all variables, then give batch norm realistic-but-wrong-for-training statistics.

    WHY: untrained random moving statistics leave the features uncentred, so every input maps
    to nearly the same embedding (cosine ~0.99 between unrelated inputs) and parity checks could
    not tell a wrong answer from a right one. So the moving statistics are measured from one
    training-mode pass over 16 seeded probe images (what training would converge to), then
    perturbed per channel (mean + N(0, BN_MEAN_JITTER) std, variance x U(BN_VARIANCE_RANGE)).
    Measured on the full model: unrelated inputs give embedding cosines ~0.4 (max ~0.7), and
    ``phase_train=True`` gives cosine ~0.2 to the right embeddings, even at batch 48. Stronger
    perturbation (0.3, [0.5, 2]) brought the collapse back (cosine ~0.8 between unrelated
    inputs). Deterministic for a given seed.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    sess.run([v1.global_variables_initializer(), v1.local_variables_initializer()])
    layers = roles["batch_norms"]
    images = probe_images(16, roles["image_size"], seed=seed + 7919)
    stats = sess.run([(m, v) for _, _, m, v in layers],
                     {roles["input"]: images, roles["phase_train"]: True})
    rng = np.random.RandomState(seed)
    feeds, inits = {}, []
    for (moving_mean, moving_var, _, _), (mean, var) in zip(layers, stats, strict=True):
        std = np.sqrt(np.maximum(var, 1e-6))
        jitter = rng.normal(0.0, BN_MEAN_JITTER, mean.shape)
        feeds[moving_mean.initializer.inputs[1]] = mean + jitter * std
        feeds[moving_var.initializer.inputs[1]] = var * rng.uniform(*BN_VARIANCE_RANGE, var.shape)
        inits += [moving_mean.initializer, moving_var.initializer]
    sess.run(inits, feeds)


def _session_config(tf: Any) -> Any:
    """Sessions that only initialise, calibrate, restore and save: Grappler's rewrites buy nothing
    there, and optimising the whole graph for each new fetch set took 80% of a tiny write."""
    config = tf.compat.v1.ConfigProto()
    config.graph_options.rewrite_options.disable_meta_optimizer = True
    return config


def _freeze_like_facenet(tf: Any, sess: Any) -> Any:
    """FaceNet's freeze_graph.py: rewrite the in-place batch-norm updates so the graph can be
    frozen, then turn the variables under InceptionResnetV1 into constants for ``embeddings``."""
    gd = sess.graph.as_graph_def()
    for node in gd.node:
        if node.op == "RefSwitch":
            node.op = "Switch"
            for i, name in enumerate(node.input):
                if "moving_" in name:
                    node.input[i] = name + "/read"
        elif node.op in ("AssignSub", "AssignAdd"):
            node.op = "Sub" if node.op == "AssignSub" else "Add"
            if "use_locking" in node.attr:
                del node.attr["use_locking"]
    keep = [n.name for n in gd.node
            if n.name.startswith(("InceptionResnetV1", "embeddings", "phase_train"))]
    return tf.compat.v1.graph_util.convert_variables_to_constants(
        sess, gd, ["embeddings"], variable_names_whitelist=keep)


def _stage_dir(out: Path) -> Path:
    """A hidden sibling of ``out``: written in full, then renamed into place in one step."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        d = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        d.mkdir()
    except OSError as e:
        raise InputError(f"--out {out}: cannot create it ({e.strerror}): choose a writable "
                         "directory") from None
    return d


def _check_formats(formats: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(as_list(formats if isinstance(formats, str) else list(formats))))
    bad = [f for f in wanted if f not in FORMATS]
    if bad or not wanted:
        raise InputError(f"formats {bad or wanted!r} not understood: choose from "
                         f"{', '.join(FORMATS)}")
    return wanted


def write_example(out_dir: str | Path, *, tiny: bool = False, seed: int = 0,
                  formats: Iterable[str] = FORMATS, image_size: int | None = None,
                  embedding_size: int | None = None,
                  log: Callable[[str], None] | None = _LOG.info) -> dict[str, Any]:
    """Write the FaceNet example under ``out_dir`` (absent or empty) as FaceNet ships it.

    Everything is written to a hidden sibling directory first and renamed into place at the
    end, so a failure never leaves a half-written model where a loader could pick it up.
    Progress goes to ``log`` (default: the builder log channel on stderr; None: silent).
    Returns paths by role (``checkpoint_dir``, ``meta``, ``checkpoint_prefix``, ``frozen``,
    ``savedmodel``; only for the formats asked for) plus ``image_size``, ``embedding_size``,
    ``parameters``, ``model_name``, ``step``, ``seconds``.
    """
    import tensorflow as tf

    v1 = tf.compat.v1
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if log is not None:
            log(f"[{time.perf_counter() - t0:5.1f}s] {msg}")

    wanted = _check_formats(formats)
    seed = _check_seed(seed, "seed")
    arch = architecture(tiny=tiny, image_size=image_size, embedding_size=embedding_size)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out} already exists and is not an empty directory: "
                         "choose a new directory or remove it first")
    stage = _stage_dir(out)
    try:
        ckpt_dir = stage / "checkpoint"
        ckpt_dir.mkdir()
        prefix = ckpt_dir / f"model-{MODEL_NAME}.ckpt"
        meta = ckpt_dir / f"model-{MODEL_NAME}.meta"
        step_prefix = f"{prefix.name}-{CHECKPOINT_STEP}"

        say(f"building Inception-ResNet-v1 ({'tiny' if tiny else 'full'}, "
            f"{arch.image_size}x{arch.image_size}x3 -> {arch.embedding_size}-d, seed {seed})")
        graph = tf.Graph()
        roles = build_facenet_graph(graph, tiny=tiny, seed=seed, image_size=arch.image_size,
                                    embedding_size=arch.embedding_size)
        say(f"  {roles['parameters']:,} network parameters, {len(graph.get_operations()):,} ops")
        with v1.Session(graph=graph, config=_session_config(tf)) as sess:
            initialize_facenet(sess, roles, seed=seed)
            say("  initialised; batch-norm statistics calibrated")
            saver = roles["saver"]
            saver.save(sess, str(prefix), global_step=CHECKPOINT_STEP, write_meta_graph=False,
                       write_state=False)
            saver.export_meta_graph(str(meta))
        # The state file without timestamps, relative, so the directory can move and repeat.
        v1.train.update_checkpoint_state(str(ckpt_dir), step_prefix,
                                         all_model_checkpoint_paths=[step_prefix])
        say(f"  wrote checkpoint/{meta.name} and {step_prefix}.*")

        if "frozen" in wanted or "savedmodel" in wanted:
            _write_from_checkpoint(tf, meta, ckpt_dir / step_prefix, stage, wanted, say)
        if "checkpoint" not in wanted:
            shutil.rmtree(ckpt_dir)
        if out.exists():
            out.rmdir()  # checked empty above
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    say(f"wrote {', '.join(wanted)} to {out} in {seconds:.1f} s")

    result: dict[str, Any] = {
        "image_size": arch.image_size, "embedding_size": arch.embedding_size,
        "parameters": roles["parameters"], "model_name": MODEL_NAME, "step": CHECKPOINT_STEP,
        "seconds": seconds,
    }
    if "checkpoint" in wanted:
        result.update(checkpoint_dir=out / "checkpoint", meta=out / "checkpoint" / meta.name,
                      checkpoint_prefix=out / "checkpoint" / step_prefix)
    if "frozen" in wanted:
        result["frozen"] = out / "frozen" / FROZEN_FILE
    if "savedmodel" in wanted:
        result["savedmodel"] = out / "savedmodel"
    return result


def _write_from_checkpoint(tf: Any, meta: Path, ckpt: Path, stage: Path, wanted: list[str],
                           say: Callable[[str], None]) -> None:
    """Restore the written files in a fresh graph -- the way a FaceNet user's freeze/export script
    starts -- so the frozen graph and SavedModel come from what is on disk, not from memory."""
    v1 = tf.compat.v1
    with tf.Graph().as_default() as g, v1.Session(graph=g, config=_session_config(tf)) as sess:
        saver = v1.train.import_meta_graph(str(meta), clear_devices=True)
        # global_step and friends are not in FaceNet's checkpoint: initialise, then restore.
        sess.run([v1.global_variables_initializer(), v1.local_variables_initializer()])
        saver.restore(sess, str(ckpt))
        say("  restored the checkpoint in a fresh graph")
        if "frozen" in wanted:
            frozen = _freeze_like_facenet(tf, sess)
            (stage / "frozen").mkdir()
            (stage / "frozen" / FROZEN_FILE).write_bytes(frozen.SerializeToString())
            say(f"  wrote frozen/{FROZEN_FILE} ({len(frozen.node):,} nodes)")
        if "savedmodel" in wanted:
            info = v1.saved_model.utils.build_tensor_info
            signature = v1.saved_model.signature_def_utils.build_signature_def(
                inputs={"images": info(g.get_tensor_by_name("input:0")),
                        "phase_train": info(g.get_tensor_by_name("phase_train:0"))},
                outputs={"embeddings": info(g.get_tensor_by_name("embeddings:0"))},
                method_name=v1.saved_model.signature_constants.PREDICT_METHOD_NAME)
            builder = v1.saved_model.Builder(str(stage / "savedmodel"))
            builder.add_meta_graph_and_variables(
                sess, [SAVEDMODEL_TAG], signature_def_map={SIGNATURE_KEY: signature},
                strip_default_attrs=True)
            builder.save()
            say("  wrote savedmodel/ (tag serve, signature serving_default: images, phase_train "
                "-> embeddings)")


def example_command(out: str = "example_model", tiny: bool = False, seed: int = 0,
                    formats: str | tuple = ",".join(FORMATS)) -> None:
    """Write the built-in FaceNet example (Inception-ResNet-v1) as checkpoint, frozen graph and
    SavedModel, to try every input flow of the builder on a realistic model.

    Args:
        out: directory to create (must be absent or empty); gets checkpoint/, frozen/facenet.pb
            and savedmodel/. The full model takes about a minute and ~290 MB on disk.
        tiny: write a few-channel 80x80 -> 16-d version with the same ops and interface, in
            seconds (for tests and quick trials).
        seed: integer seed for the weights; the same seed writes the same weights.
        formats: comma list of what to write: checkpoint, frozen, savedmodel (default: all).
    """
    tiny = as_bool(tiny, "--tiny")
    seed = _check_seed(seed, "--seed")
    wanted = as_list(formats, "--formats")
    bad = [f for f in wanted if f not in FORMATS]
    if bad or not wanted:
        raise InputError(f"--formats {','.join(bad or wanted)!r} not understood: use a comma "
                         f"list of {', '.join(FORMATS)}")
    info = write_example(out, tiny=tiny, seed=seed, formats=wanted)
    print(f"model: FaceNet Inception-ResNet-v1, {info['parameters']:,} parameters, input "
          f"input:0 [-1,{info['image_size']},{info['image_size']},3] float32, output "
          f"embeddings:0 [-1,{info['embedding_size']}], feed phase_train:0=False")
    for key in ("meta", "checkpoint_prefix", "frozen", "savedmodel"):
        if key in info:
            print(f"{key:>17}: {info[key]}")
    flow, model = next((f, info[k]) for f, k in (("checkpoint", "checkpoint_dir"),
                                                ("frozen", "frozen"),
                                                ("savedmodel", "savedmodel")) if k in info)
    print(f"next: python -m builder export --flow {flow} --model {model} ...")
