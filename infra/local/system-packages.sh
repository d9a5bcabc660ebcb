#!/usr/bin/env bash
# The Debian packages the tests' local services need beyond PyPI: a single-node Slurm with accounting (munge,
# slurmctld, slurmd, slurm-client, slurmdbd, MariaDB), which infra/local/slurm.sh starts without systemd.
# `make test` runs this first. As root it installs whatever is missing (apt-get); otherwise it says what is
# missing and the Slurm-backed tests skip, naming this script. Nothing is installed when nothing is missing.
set -euo pipefail
declare -A package_of=([munged]=munge [slurmctld]=slurmctld [slurmd]=slurmd [sbatch]=slurm-client
                       [slurmdbd]=slurmdbd [mariadbd]=mariadb-server)
missing=()
for tool in "${!package_of[@]}"; do command -v "$tool" >/dev/null || missing+=("${package_of[$tool]}"); done
((${#missing[@]})) || exit 0
IFS=$'\n' missing=($(sort <<<"${missing[*]}")); unset IFS
if [[ "$(id -u)" != 0 ]]; then
  echo "system-packages: not root, so not installing ${missing[*]}; the Slurm tests will skip" \
       "(as root: bash infra/local/system-packages.sh)" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "system-packages: no apt-get here; install ${missing[*]} (Debian names) for the Slurm tests" >&2
  exit 0
fi
echo "system-packages: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
