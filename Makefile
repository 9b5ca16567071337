# gdp-det developer entry points. Everything runs inside .venv (made by
# tools/setup_env.sh, idempotent).
PY := .venv/bin/python
DATA ?= data/toyvoc
WORK_DIR ?= work_dirs/retinanet_r18_fpn_toyvoc

.PHONY: setup test demo

setup:
	bash tools/setup_env.sh

# pytest exits 5 when it collected no tests: that is a failure here too.
test: setup
	@rc=0; $(PY) -m pytest -q $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

demo: setup
	@if [ ! -f $(DATA)/VOC2007/ImageSets/Main/test.txt ]; then \
	  $(PY) tools/make_toy_voc.py --out $(DATA) --num-train 480 --num-val 120 --seed 0 --coco; \
	fi
	$(PY) tools/train.py configs/toy/retinanet_r18_fpn_toyvoc.py --work-dir $(WORK_DIR)
