#!/usr/bin/env bash
# Rebuilds examples/speech/ with Debian's festival voices (offline):
#   apt-get install festival festvox-kallpc16k festvox-us-slt-hts
# kal (male, 16 kHz diphone voice) and slt (female, 32 kHz HTS voice) each read
# two Harvard sentences (public domain). The files are committed, so the demo
# needs no festival; this script says how they were made.
set -euo pipefail
out="$(dirname "$0")/speech"
mkdir -p "$out"
say() { # voice file text
  printf '%s\n' "$3" > "$out/.text"
  text2wave -eval "($1)" "$out/.text" -o "$out/$2"
  rm -f "$out/.text"
}
say voice_kal_diphone            kal-01.wav "The birch canoe slid on the smooth planks."
say voice_kal_diphone            kal-02.wav "Glue the sheet to the dark blue background."
say voice_cmu_us_slt_arctic_hts  slt-01.wav "It is easy to tell the depth of a well."
say voice_cmu_us_slt_arctic_hts  slt-02.wav "These days a chicken leg is a rare dish."
