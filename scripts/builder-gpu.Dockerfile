# GPU builder image for `python -m builder export --optimize tftrt`.
#
# Why an image: TF-TRT needs TensorFlow 2.17 (the last release with TensorRT; 2.18 removed it),
# an NVIDIA GPU and TensorRT 8 (libnvinfer.so.8). Engines are serialised for one TensorRT
# version, so this image installs exactly the TensorRT that tensorflow/serving:2.17.x-gpu ships
# (8.6.1.6 for CUDA 12.0, per tensorflow_serving/tools/docker/Dockerfile.gpu at 2.17.1): engines
# built here load there without being rebuilt at the first request.
#
# Build (from the repository root; needs no GPU):
#   docker build -f scripts/builder-gpu.Dockerfile -t tfs-builder-gpu .
# Convert (needs the NVIDIA container toolkit; the entrypoint is `python -m builder`):
#   docker run --rm --gpus all --user "$(id -u):$(id -g)" -e HOME=/tmp \
#     -v "$PWD:/work" -w /work tfs-builder-gpu \
#     export --flow checkpoint --model example_model/checkpoint --name facenet --repo model_repo \
#       --inputs input --outputs embeddings --feed phase_train=false --input_alias input=images \
#       --input_shapes input=?x160x160x3 --optimize tftrt --precision fp16 --batch_sizes 1,8,100
# Check what TF-TRT sees inside the image:
#   docker run --rm --gpus all --entrypoint python tfs-builder-gpu \
#     -c "from builder.optimize import tftrt; print(tftrt.probe_tensorrt())"
#
# Serve the result with tensorflow/serving:2.17.1-gpu on the same GPU model (engines are also
# specific to the GPU's compute capability).

ARG CUDA_BASE=nvidia/cuda:12.3.2-base-ubuntu22.04
FROM ${CUDA_BASE}

ARG TENSORFLOW_VERSION=2.17.1
ARG TENSORRT_DEB_VERSION=8.6.1.6-1+cuda12.0
ARG DEBIAN_FRONTEND=noninteractive

# The CUDA base image already has NVIDIA's apt repository (cuda-keyring), which carries
# TensorRT 8.6. Pin it and hold it so an upgrade can never swap the engine format.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip ca-certificates \
        libnvinfer8=${TENSORRT_DEB_VERSION} libnvinfer-plugin8=${TENSORRT_DEB_VERSION} \
    && apt-mark hold libnvinfer8 libnvinfer-plugin8 \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
RUN python3 -m venv ${VIRTUAL_ENV} && pip install --no-cache-dir --upgrade pip

# TensorFlow with its CUDA 12.3 / cuDNN 8.9 user-space libraries as pip wheels (the versions
# TF 2.17.1 was built and tested with); the driver comes from the host via --gpus.
RUN pip install --no-cache-dir "tensorflow[and-cuda]==${TENSORFLOW_VERSION}"
# TensorRT dlopens cuBLAS/cuDNN by soname: make the wheel libraries visible to the loader too.
RUN python -c "import glob, site; \
d = sorted(glob.glob(site.getsitepackages()[0] + '/nvidia/*/lib')); assert d, 'no nvidia wheels'; \
open('/etc/ld.so.conf.d/zz-nvidia-wheels.conf', 'w').write('\n'.join(d) + '\n')" \
    && ldconfig

WORKDIR /opt/tfs-builder
COPY setup.py pyproject.toml README.md ./
COPY builder ./builder
RUN pip install --no-cache-dir . \
    && python -c "import tensorflow as tf; info = tf.sysconfig.get_build_info(); \
assert tf.__version__ == '${TENSORFLOW_VERSION}', tf.__version__; \
assert info['is_tensorrt_build'], 'TensorFlow without TensorRT'" \
    && test -e /usr/lib/x86_64-linux-gnu/libnvinfer.so.8 \
    && test -e /usr/lib/x86_64-linux-gnu/libnvinfer_plugin.so.8

WORKDIR /work
ENTRYPOINT ["python", "-m", "builder"]
CMD ["--help"]
