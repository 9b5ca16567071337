# gdp-det developer entry points. Everything runs inside .venv (made by
# tools/setup_env.sh, idempotent).
PY := .venv/bin/python
DATA ?= data/toyvoc
DEMO_DIR ?= work_dirs/demo
COMPARE_DIR ?= work_dirs/compare

.PHONY: setup test test-fast test-portability demo compare compare-frcnn compare-rtmdet \
  compare-part compare-merge compare-part-ort compare-merge-ort

setup:
	bash tools/setup_env.sh

# pytest exits 5 when it collected no tests: that is a failure here too.
define pytest
	@rc=0; $(PY) -m pytest -q $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make $@: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc
endef

# Everything (CI).
test: setup
	$(call pytest,)

# The edit-test loop: every module, without the tests marked slow (training runs,
# R50-class builds, pipelines); under 3 minutes on 2 cores.
test-fast: setup
	$(call pytest,-m "not slow")

# The tests whose numbers go through float rounding (pruned vs gated outputs, decisions
# replayed at near-ties, float64 re-checks, training runs compared bit for bit), rerun
# under each setting a user's machine may differ in: thread count, the ISA torch's
# kernels are built for, oneDNN on or off. Every variant runs; the failed ones are named.
PORTABILITY_TESTS ?= tests/test_zoo_selections.py tests/test_zoo_cascade_rounding.py \
  tests/test_decisions.py tests/test_gates.py tests/test_prune_coverage.py \
  tests/test_random_networks.py tests/test_reliability.py tests/test_gdp_training.py \
  tests/test_shrink.py
PORTABILITY_VARIANTS ?= OMP_NUM_THREADS=1 OMP_NUM_THREADS=2 ATEN_CPU_CAPABILITY=default \
  ATEN_CPU_CAPABILITY=avx2 GDP_TEST_MKLDNN=0
test-portability: setup
	@failed=; for v in $(PORTABILITY_VARIANTS); do \
	  echo "== make test-portability: $$v"; \
	  env $$v $(PY) -m pytest -q $(PORTABILITY_TESTS) $(PYTEST_ARGS) || failed="$$failed $$v"; \
	done; \
	if [ -n "$$failed" ]; then echo "make test-portability: failed under:$$failed" >&2; exit 1; fi; \
	echo "make test-portability: passed under $(PORTABILITY_VARIANTS)"

# The main job on the bundled toy data: baseline -> 3 GDP epochs to 50 % FLOPs (the cut comes
# early in the phase, the rest trains at the budget) -> lossless prune/export -> evaluation
# -> work_dirs/demo/report.md (+ plots). Rerunning it skips the stages that finished.
demo: setup
	@if [ ! -f $(DATA)/VOC2007/ImageSets/Main/test.txt ]; then \
	  $(PY) tools/make_toy_voc.py --out $(DATA) --num-train 480 --num-val 120 --seed 0 --coco; \
	fi
	$(PY) tools/gdp_prune_pipeline.py configs/toy/retinanet_r18_fpn_toyvoc.py \
	  --flops-target 0.5 --min-channels 0.25 --gdp-epochs 3 --finetune-epochs 0 \
	  --work-dir $(DEMO_DIR)

# The comparison of pruners (issue 13): a converged baseline, then the no-pruning control,
# GDP, Torch-Pruning 1.6 (L1 / BN scale / Taylor, uniform and global) and random channels at
# 0.5 and 0.3 of the FLOPs, 3 seeds each, 3 epochs after the baseline, reported on a separately
# generated 1000-image split -> benchmarks/compare.json, section (e) of benchmarks/RESULTS.md,
# benchmarks/compare_pareto.png. Many CPU hours; rerunning it skips the finished runs
# (`tools/benchmark_compare.py --dry-run` prints the plan and the time left). COMPARE_JOBS
# runs at a time, one thread each (2 for a 2-core machine).
COMPARE_JOBS ?= 2
compare: setup
	@$(PY) -c "import torch_pruning" 2>/dev/null || $(PY) -m pip install -q torch-pruning==1.6.1 \
	  || echo "make compare: no Torch-Pruning; its rows are reported as skipped" >&2
	$(PY) tools/benchmark_compare.py --work-dir $(COMPARE_DIR) --data $(DATA) \
	  --val-data data/toyvoc_val1000 --num-val 1000 --val-seed 1 --budgets 0.5 0.3 \
	  --seeds 0 1 2 --epochs 3 --gdp-epochs 3 --jobs $(COMPARE_JOBS) --readme README.md \
	  $(COMPARE_ARGS)

# The same protocol on the toy Faster R-CNN R18-FPN and the toy RTMDet-tiny (issue 22): each
# has its JSON, RESULTS section and Pareto plot; README's table across detectors is
# regenerated from all of them. Their methods: the control, GDP with a FLOPs budget, random
# channels and the four Torch-Pruning criteria the issue names (DETECTOR_METHODS; a later
# --methods in COMPARE_ARGS overrides it).
DETECTOR_METHODS ?= control gdp random tp_l1_uniform tp_l1_global tp_bn_uniform tp_taylor_global
compare-frcnn:
	$(MAKE) compare COMPARE_DIR=work_dirs/compare_frcnn COMPARE_ARGS="\
	  configs/toy/faster-rcnn_r18_fpn_toyvoc.py --out benchmarks/compare_frcnn.json \
	  --plot benchmarks/compare_frcnn_pareto.png --section '$(FRCNN_SECTION)' \
	  --methods $(DETECTOR_METHODS) $(COMPARE_ARGS)"
compare-rtmdet:
	$(MAKE) compare COMPARE_DIR=work_dirs/compare_rtmdet COMPARE_ARGS="\
	  configs/toy/rtmdet_tiny_toyvoc.py --out benchmarks/compare_rtmdet.json \
	  --plot benchmarks/compare_rtmdet_pareto.png --section '$(RTMDET_SECTION)' \
	  --methods $(DETECTOR_METHODS) $(COMPARE_ARGS)"
FRCNN_SECTION = (r) Accuracy at equal FLOPs and equal latency on the toy Faster R-CNN R18-FPN
RTMDET_SECTION = (s) Accuracy at equal FLOPs and equal latency on the toy RTMDet-tiny

# The same comparison in parts, for machines that keep nothing between sessions (a whole
# detector comparison is ~15 core-hours on 2 cores): `make compare-part DETECTOR=frcnn SEED=1`
# trains a baseline of its own (seeded SEED) and that seed's PART_METHODS runs in
# work_dirs/compare_frcnn_s1, writes benchmarks/parts/compare_frcnn_s1.json (commit it), then
# merges every part of the detector into benchmarks/compare_frcnn.json, its RESULTS section,
# plot and README tables (`make compare-merge DETECTOR=frcnn` does only that). Runs are paired
# within a seed; latency is each run's ratio to its own baseline.
DETECTOR ?= frcnn
SEED ?= 0
PART_METHODS ?= gdp tp_l1_uniform
CONFIG_frcnn = configs/toy/faster-rcnn_r18_fpn_toyvoc.py
CONFIG_rtmdet = configs/toy/rtmdet_tiny_toyvoc.py
SECTION_frcnn = $(FRCNN_SECTION)
SECTION_rtmdet = $(RTMDET_SECTION)
# the toy RetinaNet in parts (its `make compare` runs from one baseline): GDP against the
# fine-tunes given its training compute, `_x2` methods (issue 22 part 3), e.g.
# `make compare-part DETECTOR=retinanet SEED=0 PART_METHODS="gdp tp_l1_uniform tp_l1_uniform_x2"`
CONFIG_retinanet = configs/toy/retinanet_r18_fpn_toyvoc.py
SECTION_retinanet = (aa) Equal training compute on the toy RetinaNet R18-FPN
require_detector = @test -n "$(CONFIG_$(DETECTOR))" || \
  { echo "make $@: DETECTOR is frcnn, rtmdet or retinanet" >&2; exit 2; }
compare-part:
	$(require_detector)
	$(MAKE) compare COMPARE_DIR=work_dirs/compare_$(DETECTOR)_s$(SEED) COMPARE_ARGS="\
	  $(CONFIG_$(DETECTOR)) --part --out benchmarks/parts/compare_$(DETECTOR)_s$(SEED).json \
	  --seeds $(SEED) --baseline-seed $(SEED) --methods $(PART_METHODS) $(COMPARE_ARGS)"
	$(MAKE) compare-merge
compare-merge: setup
	$(require_detector)
	$(PY) tools/benchmark_compare.py --merge benchmarks/parts/compare_$(DETECTOR)_s*.json \
	  --out benchmarks/compare_$(DETECTOR).json --plot benchmarks/compare_$(DETECTOR)_pareto.png \
	  --section '$(SECTION_$(DETECTOR))' --readme README.md

# Equal latency where users deploy: a part's finished runs (compare-part, same SEED and
# COMPARE_ARGS) timed again, every model deployed by mmdeploy to ONNX Runtime (NMS in the
# graph, one thread, interleaved); no training. Writes
# benchmarks/parts/compare_$(DETECTOR)_ort_s$(SEED).json, then merges the detector's ONNX
# Runtime parts into benchmarks/compare_$(DETECTOR)_ort.json, its RESULTS section, plot and
# README block. GDP's latency budget is not among them: its runs were budgeted in torch.
ORT_SECTION_frcnn = (y) Accuracy at equal ONNX Runtime latency on the toy Faster R-CNN R18-FPN
ORT_SECTION_rtmdet = (z) Accuracy at equal ONNX Runtime latency on the toy RTMDet-tiny
compare-part-ort:
	$(require_detector)
	$(MAKE) compare COMPARE_DIR=work_dirs/compare_$(DETECTOR)_s$(SEED) COMPARE_ARGS="\
	  $(CONFIG_$(DETECTOR)) --part --collect-only --latency-backend onnxruntime \
	  --out benchmarks/parts/compare_$(DETECTOR)_ort_s$(SEED).json --seeds $(SEED) \
	  --baseline-seed $(SEED) --methods $(DETECTOR_METHODS) $(COMPARE_ARGS)"
	$(MAKE) compare-merge-ort
compare-merge-ort: setup
	$(require_detector)
	$(PY) tools/benchmark_compare.py --merge benchmarks/parts/compare_$(DETECTOR)_ort_s*.json \
	  --out benchmarks/compare_$(DETECTOR)_ort.json \
	  --plot benchmarks/compare_$(DETECTOR)_ort_pareto.png \
	  --section '$(ORT_SECTION_$(DETECTOR))' --readme README.md
