"""The cell CNN (a small ResNet trained from scratch) and its training-time augmentation.

Augmentation lives in its own layer, placed in front of the network only in the
training model, so the exported network holds no random ops.
"""

from __future__ import annotations

import math
import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from shared.preprocessing import IMAGE_SIZE
from shared.vocabulary import CELL_TYPES


BLUR_LEVELS = 5


def gaussian_kernel(sigma: float, radius: int | None = None):
    """A normalised 2-D Gaussian as a depthwise kernel for 3 channels; radius about 2 sigma unless given."""
    radius = max(1, round(2 * sigma)) if radius is None else radius
    grid = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel_1d = tf.exp(-(grid**2) / (2 * sigma**2))
    kernel_1d /= tf.reduce_sum(kernel_1d)
    kernel = kernel_1d[:, None] * kernel_1d[None, :]
    return tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])


class CellAugmentation(layers.Layer):
    """Per-image random geometry, stain/colour jitter, blur and noise (training only).

    - geometry: any rotation, horizontal flip, scale jitter, translation up to 6 %, reflected
      borders. The zoom is drawn log-uniformly from ``zoom_range`` (0.8x to 1.25x: this hospital's
      magnification) or, with probability ``wide_zoom_probability``, from ``wide_zoom_range``
      (e.g. 0.7x to 2.2x, so cells cropped tighter by another scanner or a 100x-oil camera look
      familiar while half the images keep the home scale);
    - stain: with probability ``stain_probability`` a jitter of the stain concentrations in the
      optical-density (HED) space (each stain scaled by 1 +- ``stain_scale`` and shifted), then a
      per-channel gain, brightness, contrast, saturation and hue jitter;
    - blur: by default a blend of each image with its Gaussian blur (sigma 1.2 px) of random strength on a quarter
      of the images; with ``blur_sigma_range``, a true Gaussian blur instead, on ``blur_probability`` of the
      images, its sigma drawn from ``BLUR_LEVELS`` evenly spaced values across the range (a blend keeps part of
      the finest detail that another microscope's softer optics remove: after a 1 px blur of the stored images,
      2.2.0 called 18 % of the DeepAPL test blasts lymphocytes, docs/cell_model_experiments.md);
    - sensor noise.
    Input is uint8 in [0, 255] at ``IMAGE_SIZE`` (``source_scale`` 2: at twice that side); output is float32 in
    [0, 255] at the current ``output_size`` (progressive resizing: the early epochs train on smaller images, which
    is cheaper, and the last ones at full size). Outside training the input passes unchanged.

    ``source_scale``: with 1 the geometry samples the ``IMAGE_SIZE`` arrays, so an enlarged cell is an enlarged
    112 px picture, soft, and the network never sees an enlarged cell sharp as a microscope at higher
    magnification gives it (2.2.0: PBC cells enlarged 2x from their 224 px copies, 0.75 right; the same
    enlarged from the 112 px input, 0.94). With 2 the training images come at twice the side, the geometry
    runs at twice the output size and an antialiased bilinear resize (as ``shared.preprocessing``'s) brings
    it to the output: enlarged cells keep the detail their source has. ``sharp_fraction`` (source scale above 1)
    is the share of images that take that path; the others are first resized to ``IMAGE_SIZE`` and enlarged from
    there, soft, as with source scale 1 (at the home scale the two look alike; enlarged, one is a sharp
    microscope's picture and the other an enlarged copy's, and another hospital may send either).
    """

    def __init__(self, zoom_range: tuple[float, float] = (0.8, 1.25),
                 wide_zoom_range: tuple[float, float] | None = None, wide_zoom_probability: float = 0.0,
                 stain_probability: float = 0.0, stain_scale: float = 0.0, colour_strength: float = 1.0,
                 blur_probability: float = 0.25, blur_sigma_range: tuple[float, float] | None = None,
                 source_scale: int = 1, sharp_fraction: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.source_scale = int(source_scale)
        self.sharp_fraction = float(sharp_fraction)
        self.blur_probability = float(blur_probability)
        self.blur_sigma_range = tuple(float(b) for b in blur_sigma_range) if blur_sigma_range else None
        self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        self.wide_zoom_range = tuple(float(z) for z in (wide_zoom_range or zoom_range))
        self.wide_zoom_probability = float(wide_zoom_probability)
        self.stain_probability = float(stain_probability)
        self.stain_scale = float(stain_scale)
        self.colour_strength = float(colour_strength)
        self.output_size = tf.Variable(IMAGE_SIZE, dtype=tf.int32, trainable=False, name="output_size")
        self._blur_kernel = gaussian_kernel(1.2, radius=2)
        sigmas = np.linspace(*self.blur_sigma_range, BLUR_LEVELS) if self.blur_sigma_range else []
        self._blur_kernels = [gaussian_kernel(float(sigma)) for sigma in sigmas]

    def _geometry(self, images, batch):
        angle = tf.random.uniform([batch], 0.0, 2.0 * math.pi)
        home = tf.random.uniform([batch], math.log(self.zoom_range[0]), math.log(self.zoom_range[1]))
        wide = tf.random.uniform([batch], math.log(self.wide_zoom_range[0]), math.log(self.wide_zoom_range[1]))
        zoom = tf.exp(tf.where(tf.random.uniform([batch]) < self.wide_zoom_probability, wide, home))
        flip = tf.where(tf.random.uniform([batch]) < 0.5, -1.0, 1.0)
        shift = tf.random.uniform([batch, 2], -0.06, 0.06)  # a fraction of the image side
        draw = (angle, zoom, flip, shift, batch)
        take_sharp = tf.random.uniform([batch, 1, 1, 1]) < self.sharp_fraction  # drawn always: same later draws
        if self.source_scale == 1:
            return self._warp(images, self.output_size, draw)
        sharp = tf.image.resize(self._warp(images, self.output_size * self.source_scale, draw),
                                tf.stack([self.output_size, self.output_size]), method="bilinear", antialias=True)
        if self.sharp_fraction >= 1.0:
            return sharp
        home_side = tf.shape(images)[1] // self.source_scale
        at_input_size = tf.image.resize(images, tf.stack([home_side, home_side]), method="bilinear", antialias=True)
        soft = self._warp(at_input_size, self.output_size, draw)
        return tf.where(take_sharp, sharp, soft)

    @staticmethod
    def _warp(images, sampled, draw):
        """Rotate, flip, zoom and shift ``images`` into ``sampled`` x ``sampled`` (reflected borders)."""
        angle, zoom, flip, shift_fraction, batch = draw
        size = tf.cast(tf.shape(images)[1], tf.float32)
        out_size = tf.cast(sampled, tf.float32)
        centre, out_centre = (size - 1.0) / 2.0, (out_size - 1.0) / 2.0
        shift = shift_fraction * size
        cos, sin = tf.cos(angle) / zoom * (size / out_size), tf.sin(angle) / zoom * (size / out_size)
        # output pixel -> input pixel: M (p - c_out) + c + t, with M = R(angle) diag(flip, 1) / zoom,
        # scaled by size / out_size when the output is smaller than the input
        a0, a1 = cos * flip, -sin
        b0, b1 = sin * flip, cos
        a2 = centre - a0 * out_centre - a1 * out_centre + shift[:, 0]
        b2 = centre - b0 * out_centre - b1 * out_centre + shift[:, 1]
        zeros = tf.zeros([batch])
        transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.stack([sampled, sampled]),
            fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT",
        )

    def _colour(self, images, batch):
        """One random 3x3 colour matrix per image: stain gain, saturation, hue rotation (in YIQ)."""
        to_yiq = tf.constant([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        from_yiq = tf.linalg.inv(to_yiq)
        k = self.colour_strength
        hue = tf.random.uniform([batch], -0.1 * k, 0.1 * k)  # radians
        saturation = tf.random.uniform([batch], 1.0 - 0.2 * k, 1.0 + 0.2 * k)
        cos, sin = tf.cos(hue) * saturation, tf.sin(hue) * saturation
        ones, zeros = tf.ones([batch]), tf.zeros([batch])
        rotate = tf.reshape(tf.stack([ones, zeros, zeros, zeros, cos, -sin, zeros, sin, cos], axis=1), [batch, 3, 3])
        gain = tf.linalg.diag(tf.random.uniform([batch, 3], 1.0 - 0.08 * k, 1.0 + 0.08 * k))
        matrix = gain @ from_yiq @ rotate @ to_yiq  # applied to column vectors
        x = tf.einsum("bhwc,bdc->bhwd", images, matrix)
        brightness = tf.random.uniform([batch, 1, 1, 1], 1.0 - 0.1 * k, 1.0 + 0.1 * k)
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        contrast = tf.random.uniform([batch, 1, 1, 1], 1.0 - 0.15 * k, 1.0 + 0.15 * k)
        return ((x - mean) * contrast + mean) * brightness

    # Ruifrok & Johnston's stain vectors (haematoxylin, eosin, DAB) as rows, in optical density.
    _STAIN_VECTORS = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))

    def _stain(self, images, batch):
        """Jitter the stain concentrations: OD = -log((x + 1) / 256), C = OD S^-1, C' = C a + b."""
        stains = tf.constant(self._STAIN_VECTORS, tf.float32)
        stains = stains / tf.norm(stains, axis=1, keepdims=True)
        density = -tf.math.log((images + 1.0) / 256.0)
        concentration = tf.einsum("bhwc,cs->bhws", density, tf.linalg.inv(stains))
        scale = tf.random.uniform([batch, 1, 1, 3], 1.0 - self.stain_scale, 1.0 + self.stain_scale)
        shift = tf.random.uniform([batch, 1, 1, 3], -0.05 * self.stain_scale, 0.05 * self.stain_scale)
        jittered = tf.einsum("bhws,sc->bhwc", concentration * scale + shift, stains)
        result = tf.clip_by_value(256.0 * tf.exp(-jittered) - 1.0, 0.0, 255.0)
        apply = tf.random.uniform([batch, 1, 1, 1]) < self.stain_probability
        return tf.where(apply, result, images)

    def _blur(self, images, batch):
        chosen = tf.random.uniform([batch, 1, 1, 1]) < self.blur_probability
        if self._blur_kernels:
            level = tf.random.uniform([batch], 0, len(self._blur_kernels), dtype=tf.int32)
            versions = tf.stack([tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")
                                 for kernel in self._blur_kernels], axis=1)  # (batch, levels, h, w, c)
            blurred = tf.gather(versions, level, axis=1, batch_dims=1)
            x = tf.where(chosen, blurred, images)
        else:
            blurred = tf.nn.depthwise_conv2d(images, self._blur_kernel, [1, 1, 1, 1], "SAME")
            x = images + tf.where(chosen, tf.random.uniform([batch, 1, 1, 1]), 0.0) * (blurred - images)
        return x

    def _blur_and_noise(self, images, batch):
        x = self._blur(images, batch)
        noise_level = tf.random.uniform([batch, 1, 1, 1], 0.0, 3.0)
        x = x + tf.random.normal(tf.shape(x)) * noise_level
        return tf.clip_by_value(x, 0.0, 255.0)

    def call(self, inputs, training=None):
        images = tf.cast(inputs, tf.float32)
        if not training:
            return images
        batch = tf.shape(images)[0]
        images = self._geometry(images, batch)
        if self.stain_probability > 0:
            images = self._stain(images, batch)
        images = self._colour(images, batch)
        return self._blur_and_noise(images, batch)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], None, None, input_shape[3])


def _residual_block(x, filters: int, stride: int):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization(gamma_initializer="zeros")(y)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
        shortcut = layers.BatchNormalization()(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


def build_network(widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.2,
                  n_classes: int = len(CELL_TYPES)) -> keras.Model:
    """ResNet-style CNN: float32 RGB in [0, 255] -> logits over ``CELL_TYPES``."""
    inputs = keras.Input((None, None, 3), dtype="float32", name="pixels")  # any size: progressive resizing
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for stage, filters in enumerate(widths):
        x = _residual_block(x, filters, stride=1 if stage == 0 else 2)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    logits = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="cell_resnet")


def _identity_block(x, name: str):
    """A stride-1 residual block (as ``_residual_block``) whose last batch norm starts at gamma 0: on a
    ReLU output x >= 0 it computes ReLU(0 + x) = x, so inserting it leaves the network's function unchanged."""
    filters = x.shape[-1]
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv_a")(x)
    y = layers.BatchNormalization(name=f"{name}_bn_a")(y)
    y = layers.ReLU(name=f"{name}_relu_a")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv_b")(y)
    y = layers.BatchNormalization(gamma_initializer="zeros", name=f"{name}_bn_b")(y)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, x]))


def deepen(network: keras.Model, extra_blocks: int = 1) -> keras.Model:
    """``network`` with ``extra_blocks`` more residual blocks after every residual block (each stage's
    output), initialised to the identity: the deeper network computes exactly what ``network`` did and
    starts its fine-tune from there, with about twice the parameters per extra block and stage.
    ``network`` itself is left as it was (its layers are copied); the new ones are named ``deep<n>_*``."""
    original, network = network, keras.models.clone_model(network)
    network.set_weights(original.get_weights())
    inputs = keras.Input(network.inputs[0].shape[1:], dtype=network.inputs[0].dtype, name=network.inputs[0].name)
    mapped = {id(network.inputs[0]): inputs}
    added = sum(layer.name.startswith("deep") and layer.name.endswith("_add") for layer in network.layers)
    for layer in network.layers[1:]:
        node = layer._inbound_nodes[0]
        arguments = [mapped[id(t)] for t in node.input_tensors]
        output = layer(arguments if len(arguments) > 1 else arguments[0])
        if isinstance(layer, layers.ReLU) and isinstance(node.parent_nodes[0].operation, layers.Add):
            for _ in range(extra_blocks):
                added += 1
                output = _identity_block(output, f"deep{added}")
        mapped[id(node.output_tensors[0])] = output
    return keras.Model(inputs, mapped[id(network.outputs[0])], name=network.name)


def network_from(earlier: keras.Model, earlier_classes: list[str]) -> keras.Model:
    """A network over ``CELL_TYPES`` that starts from ``earlier`` (same body, another label set):
    every layer's weights are copied; the output layer keeps the rows of classes both share and
    starts the new classes at small random weights with the mean bias."""
    def clone(layer):
        if layer.name == "logits":
            return layers.Dense(len(CELL_TYPES), name="logits")
        return layer.__class__.from_config(layer.get_config())

    network = keras.models.clone_model(earlier, clone_function=clone)  # any depth (``deepen``)
    for old, new in zip(earlier.layers, network.layers):
        if new.name == "logits" or old.name == "logits":
            continue
        new.set_weights(old.get_weights())
    old_kernel, old_bias = earlier.get_layer("logits").get_weights()
    kernel, bias = network.get_layer("logits").get_weights()
    kernel *= 0.1
    bias[:] = old_bias.mean()
    for column, name in enumerate(CELL_TYPES):
        if name in earlier_classes:
            kernel[:, column] = old_kernel[:, earlier_classes.index(name)]
            bias[column] = old_bias[earlier_classes.index(name)]
    network.get_layer("logits").set_weights([kernel, bias])
    return network


def average_weights(networks: list[keras.Model]) -> keras.Model:
    """A uniform "model soup": a new network whose every weight is the mean of ``networks``' (same
    architecture, fine-tuned from a common network so that they lie in one basin). Batch-norm moving
    statistics are averaged too; re-estimate them afterwards (``recalibrate_batch_norm``)."""
    if len(networks) < 2:
        raise ValueError("average_weights needs at least two networks")
    soup = keras.models.clone_model(networks[0])
    for layer_index, layer in enumerate(soup.layers):
        stacks = [net.layers[layer_index].get_weights() for net in networks]
        if not stacks[0]:
            continue
        shapes = [[w.shape for w in weights] for weights in stacks]
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"layer {layer.name}: the networks' weights differ in shape")
        layer.set_weights([np.mean(np.stack(ws), axis=0) for ws in zip(*stacks)])
    return soup


def recalibrate_batch_norm(network: keras.Model, images: np.ndarray, batch_size: int = 64,
                           max_batches: int = 100, seed: int = 0) -> int:
    """Re-estimate every BatchNormalization layer's moving mean and variance on clean training
    images (no augmentation), as the plain average of per-batch statistics.

    During training the statistics were gathered on augmented images (blur, noise, colour
    jitter, reflected borders), which served images never have; re-estimating them on clean
    images raised validation accuracy from 0.963 to 0.974 for the committed network. Only the
    moving statistics change: no weight is trained. Returns the number of images used.
    """
    norms = [layer for layer in network.layers if isinstance(layer, layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    order = np.random.default_rng(seed).permutation(len(images))[: batch_size * max_batches]
    try:
        for step, start in enumerate(range(0, len(order), batch_size)):
            for layer in norms:
                layer.momentum = step / (step + 1)  # running average: batch k gets weight 1/(k+1)
            network(tf.constant(images[order[start: start + batch_size]].astype(np.float32)), training=True)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
    return int(len(order))


def build_training_model(network: keras.Model, zoom_range: tuple[float, float], **augmentation_options
                         ) -> tuple[keras.Model, CellAugmentation]:
    """The network behind the augmentation layer; the layer is returned too, to set its size. With
    ``source_scale`` above 1 the training images are larger than the validation images: any side is taken."""
    augmentation = CellAugmentation(zoom_range, **augmentation_options)
    side = IMAGE_SIZE if augmentation.source_scale == 1 else None
    inputs = keras.Input((side, side, 3), dtype="uint8", name="image")
    return keras.Model(inputs, network(augmentation(inputs)), name="cell_resnet_train"), augmentation


# Test-time views: the cell's class does not change under flips, so the served network can
# average its logits over flipped copies. Each entry flips (height, width) of an NHWC batch.
TEST_TIME_VIEWS = {
    "identity": (False, False),
    "flip_left_right": (False, True),
    "flip_up_down": (True, False),
    "rotate_180": (True, True),
}


def view_names(count: int) -> list[str]:
    if not 1 <= count <= len(TEST_TIME_VIEWS):
        raise ValueError(f"test-time views must be 1 to {len(TEST_TIME_VIEWS)}, got {count}")
    return list(TEST_TIME_VIEWS)[:count]


def numpy_view(images: np.ndarray, name: str) -> np.ndarray:
    flip_height, flip_width = TEST_TIME_VIEWS[name]
    return images[:, :: -1 if flip_height else 1, :: -1 if flip_width else 1]


def view_averaged_logits(network: keras.Model, images: np.ndarray, views: int, batch_size: int = 256) -> np.ndarray:
    """Mean logits over the first ``views`` test-time views, as the exported serving model computes."""
    total = None
    for name in view_names(views):
        logits = network.predict(numpy_view(images, name).astype(np.float32), batch_size=batch_size, verbose=0)
        total = logits if total is None else total + logits
    return total / views


def build_serving_model(network: keras.Model, temperature: float, views: int = 1) -> keras.Model:
    """uint8 image batch -> calibrated probabilities softmax(mean logits over views / temperature)."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8", name="image")
    pixels = keras.ops.cast(inputs, "float32")
    copies = []
    for name in view_names(views):
        flip_height, flip_width = TEST_TIME_VIEWS[name]
        view = keras.ops.flip(pixels, axis=1) if flip_height else pixels
        copies.append(keras.ops.flip(view, axis=2) if flip_width else view)
    if views == 1:
        logits = network(pixels)
    else:
        stacked = network(keras.ops.concatenate(copies, axis=0))  # one network run over all views
        logits = keras.ops.mean(keras.ops.reshape(stacked, (views, -1, len(CELL_TYPES))), axis=0)
    probabilities = layers.Softmax(name="probabilities")(logits / temperature)
    return keras.Model(inputs, probabilities, name="cell_resnet_serving")


class ProgressiveResize(keras.callbacks.Callback):
    """Sets the augmentation layer's output size at the start of each epoch from ``sizes``."""

    def __init__(self, augmentation: CellAugmentation, sizes: list[int]):
        super().__init__()
        self.augmentation = augmentation
        self.sizes = sizes

    def on_epoch_begin(self, epoch, logs=None):
        size = self.sizes[min(epoch, len(self.sizes) - 1)]
        if int(self.augmentation.output_size.numpy()) != size:
            print(f"\nepoch {epoch + 1}: training on {size}x{size} images", flush=True)
        self.augmentation.output_size.assign(size)


class EpochClock(keras.callbacks.Callback):
    """Records each epoch's duration and stops training when one more epoch (plus ~2 minutes for
    evaluation and export) would overrun the time budget counted from ``started``."""

    def __init__(self, started: float, budget_s: float):
        super().__init__()
        self.started = started
        self.budget_s = budget_s
        self.epoch_seconds: list[float] = []
        self.stopped = False
        self._epoch_started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._epoch_started)
        if time.perf_counter() - self.started + max(self.epoch_seconds) + 120.0 > self.budget_s:
            print(f"time budget: stopping after epoch {epoch + 1}", flush=True)
            self.stopped = True
            self.model.stop_training = True
