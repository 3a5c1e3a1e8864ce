#!/usr/bin/env bash
# A recipe merged by N Slurm jobs: a job array of N partitions (Invoke-DareMerge -Partition i/N, each writing whole
# shards into a staging folder beside the output) and a completion job that runs after all of them
# (Complete-DareExport: verifies every partition and publishes the model atomically; a no-op with a warning when the
# last partition already published it). The output is byte for byte what one `Invoke-DareMerge recipe.yml` writes.
#
# Usage (on a login node; every node must see the recipe, the models and the output folder at the same paths):
#   examples/slurm-partitioned-merge.sh RECIPE.yml OUTPUT-FOLDER N [sbatch options for every job, e.g. -p cpu -c 16 --mem=32G]
# Prints the array's and the completion job's ids. Environment:
#   DARE_PWSH    the PowerShell command on the compute nodes (default: pwsh; e.g. "dotnet pwsh")
#   DARE_MODULE  the module to import (default: Dare; or a path to Dare.psd1)
#   DARE_FORCE   1 to replace an existing output folder (-Force)
set -euo pipefail

case "${1:-}" in
  --partition)
    # Runs inside an array task: the partition index is the task id (--array=0-(N-1)).
    exec ${DARE_PWSH:-pwsh} -NoProfile -NonInteractive -Command '
      $ErrorActionPreference = "Stop"
      Import-Module $env:DARE_MODULE
      Invoke-DareMerge -LiteralPath $env:DARE_RECIPE -OutputLiteralPath $env:DARE_OUTPUT `
        -Partition "$env:SLURM_ARRAY_TASK_ID/$env:DARE_PARTITIONS" -Force:($env:DARE_FORCE -eq "1") -Verbose'
    ;;
  --complete)
    exec ${DARE_PWSH:-pwsh} -NoProfile -NonInteractive -Command '
      $ErrorActionPreference = "Stop"
      Import-Module $env:DARE_MODULE
      Complete-DareExport -LiteralPath $env:DARE_OUTPUT -Force:($env:DARE_FORCE -eq "1") -Verbose'
    ;;
esac

if [ $# -lt 3 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
recipe=$(realpath "$1"); output=$(realpath -m "$2"); count=$3; shift 3
export DARE_RECIPE="$recipe" DARE_OUTPUT="$output" DARE_PARTITIONS="$count"
export DARE_MODULE="${DARE_MODULE:-Dare}" DARE_FORCE="${DARE_FORCE:-0}"
script=$(realpath "$0")

# sbatch exports this environment to the jobs (--export=ALL is the default).
array=$(sbatch --parsable --job-name=dare-partition --array=0-$((count - 1)) "$@" "$script" --partition)
# afterany, not afterok: the completion runs even when a partition failed, and then names the partitions to rerun.
complete=$(sbatch --parsable --job-name=dare-complete --dependency=afterany:"${array%%;*}" "$@" "$script" --complete)
echo "$array $complete"
