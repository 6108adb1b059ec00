#!/usr/bin/env bash
# The benchmark's baseline: what people write instead of a daemon. Every file that lands in DIR
# is uploaded with curl and appended to a task's file field the naive way (read the task, append
# the new asset with jq, write the whole list back), one file after another: one POST, one GET
# and one PUT per file, no settling, no state, no retries.
#
# Usage: TALLYFY_ACCESS_TOKEN=… baseline-inotify-curl.sh DIR BASE_URL ORG RUN TASK CAPTURE STEP CHECKLIST
# Needs inotifywait (inotify-tools), curl and jq. Prints "Watches established." on stderr once
# it is watching.
set -u -o pipefail

dir=$1 base=$2 org=$3 run=$4 task=$5 capture=$6 step=$7 checklist=$8
api="$base/organizations/$org"
auth=(-H "Authorization: Bearer $TALLYFY_ACCESS_TOKEN" -H "Accept: application/json" -H "X-Tallyfy-Client: APIClient")

inotifywait -m -e close_write -e moved_to --format '%w%f' "$dir" | while IFS= read -r path; do
    asset=$(curl -sS -f "${auth[@]}" \
        -F "name=@$path" -F subject_type=Run -F "subject_id=$run" -F "uploaded_from=$capture" \
        -F "step_id=$step" -F "checklist_id=$checklist" -F source=local \
        "$api/file" | jq -c .data) || { echo "upload failed: $path" >&2; continue; }
    # The list can outgrow one command-line argument, so it goes through pipes, not variables.
    curl -sS -f "${auth[@]}" "$api/runs/$run/tasks/$task?with=form_fields" |
        jq -c --arg capture "$capture" --argjson asset "$asset" \
            '{taskdata: {($capture): (((.data.form_fields.data[] | select(.id == $capture) | .value) // []) + [$asset])}}' |
        curl -sS -f -o /dev/null "${auth[@]}" -X PUT -H "Content-Type: application/json" \
            --data-binary @- "$api/runs/$run/tasks/$task" ||
        echo "attach failed: $path" >&2
done
