#!/bin/sh
# Prints the newest glibc symbol version the given ELF files need (e.g. 2.34): what a machine's
# glibc must be at least for them to load.
set -eu
objdump -T "$@" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n -u | tail -n 1
