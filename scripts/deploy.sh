#!/usr/bin/env bash
# Deploy certroll's Azure resources (infra/main.bicep) and run the post-deploy steps.
#
#   scripts/deploy.sh -e <environment> -l <location> [-c <api-client-id>] [-p params.json]
#
# Without -c the operator API's app registration is created (or found) first
# (scripts/post-deploy.sh <deployment> app-registration) and its client id used.
# Needs: Azure CLI (az login done, Bicep bundled), rights to create a resource group and
# role assignments in the subscription (Owner, or Contributor + Role Based Access Control
# Administrator). See docs/deploy.md.
set -euo pipefail
cd "$(dirname "$0")/.."

env_name="" location="" client_id="" params="infra/main.parameters.json"
while getopts "e:l:c:p:h" opt; do
  case $opt in
    e) env_name=$OPTARG ;;
    l) location=$OPTARG ;;
    c) client_id=$OPTARG ;;
    p) params=$OPTARG ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
if [[ -z $env_name || -z $location ]]; then
  sed -n '2,12p' "$0"; exit 2
fi

deployment="certroll-${env_name}"
if [[ -z $client_id ]]; then
  scripts/post-deploy.sh "$deployment" app-registration
  client_id=$(cat "${WORK:-.certroll/deploy/$deployment}/api-client-id")
fi
echo "deploying ${deployment} to ${location}"
az deployment sub create \
  --name "$deployment" \
  --location "$location" \
  --template-file infra/main.bicep \
  --parameters "@${params}" \
  --parameters environmentName="$env_name" location="$location" authClientId="$client_id" \
  --output none

echo "infrastructure deployed; running post-deploy steps"
exec scripts/post-deploy.sh "$deployment"
