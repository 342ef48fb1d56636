"""``make bench``: how fast the bundle is on this machine, against the machine's own limit.

One process measures, in one run so that the ratios hold on a noisy machine: the fp32 GEMM peak (``gemm``); each
network of the quick and paper profiles (``networks``: latency, throughput, training images/s, peak memory, FLOPs
and the fraction of the GEMM peak; TorchScript and ONNX Runtime beside eager torch with their outputs compared);
the inference path (``end_to_end``: one X-ray split by step in a warm process, the batch over 50-400 images with
and without DICOM outputs, the command's cold start); and the training stages' seconds per epoch against the
dataset size (``training``). ``table`` writes the markdown. Run ``python -m tools.bench --help``.
"""
