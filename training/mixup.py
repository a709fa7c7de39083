"""Mixup in training (``train_cells --mixup-alpha``): blend a share of each batch's images with others of it.

After augmentation, each chosen image becomes ``lam x itself + (1 - lam) x another image of the batch``, and its
target and sample weight are blended the same way; ``lam`` is drawn from Beta(alpha, alpha) and folded to at
least 0.5, so the image keeps its own cell as the larger part. Borders between lymphocyte, monocyte and blast
that two technologists draw differently become ramps instead of cliffs; the network, its size and its
inference are unchanged (only the training step is), so it costs nothing in the service.
"""

from __future__ import annotations

import keras


def blend(images, targets, sample_weight, alpha: float, probability: float, seed_generator):
    """``images`` (N x H x W x 3 float), ``targets`` (N x C rows), ``sample_weight`` (N, or None) mixed with a
    random permutation of the batch; an image not chosen (share ``1 - probability``) keeps lam = 1."""
    from keras import ops

    count = ops.shape(images)[0]
    lam = keras.random.beta((count,), alpha, alpha, seed=seed_generator)
    lam = ops.maximum(lam, 1.0 - lam)
    chosen = keras.random.uniform((count,), seed=seed_generator) < probability
    lam = ops.where(chosen, lam, ops.ones_like(lam))
    partner = keras.random.shuffle(ops.arange(count), seed=seed_generator)
    lam_images = ops.reshape(lam, (-1, 1, 1, 1))
    mixed_images = lam_images * images + (1.0 - lam_images) * ops.take(images, partner, axis=0)
    lam_rows = ops.reshape(lam, (-1, 1))
    mixed_targets = lam_rows * targets + (1.0 - lam_rows) * ops.take(targets, partner, axis=0)
    mixed_weight = None
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, lam.dtype)
        mixed_weight = lam * sample_weight + (1.0 - lam) * ops.take(sample_weight, partner, axis=0)
    return mixed_images, mixed_targets, mixed_weight


class MixupTraining(keras.Model):
    """The network behind the augmentation layer, as ``cnn.build_training_model``, whose training step mixes
    the augmented batch (``blend``) before the network sees it. Targets must be rows of probabilities."""

    def __init__(self, augmentation, network, alpha: float, probability: float, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if alpha <= 0 or not 0.0 < probability <= 1.0:
            raise ValueError(f"mixup needs alpha > 0 and a share in (0, 1], got {alpha} and {probability}")
        self.augmentation, self.network = augmentation, network
        self.alpha, self.probability = alpha, probability
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        return self.network(self.augmentation(images, training=training), training=training)

    def train_step(self, data):
        import tensorflow as tf

        images, targets, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        augmented = self.augmentation(images, training=True)
        mixed, targets, sample_weight = blend(augmented, targets, sample_weight, self.alpha, self.probability,
                                              self.seed_generator)
        with tf.GradientTape() as tape:
            logits = self.network(mixed, training=True)
            loss = self.compute_loss(x=mixed, y=targets, y_pred=logits, sample_weight=sample_weight, training=True)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply(gradients, self.trainable_variables)
        for metric in self.metrics:  # the loss tracker is the caller's to update in a custom step
            if metric.name == "loss":
                metric.update_state(loss)
        return self.compute_metrics(mixed, targets, logits, sample_weight=sample_weight)
