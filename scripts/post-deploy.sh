#!/usr/bin/env bash
# Post-deploy steps that Bicep cannot do (see docs/deploy.md). Idempotent: run it after
# every `az deployment sub create`.
#
#   scripts/post-deploy.sh <deployment-name> [step ...]
#
# Steps (default: all, in this order):
#   link-dps      link the IoT Hub to DPS (hub policy 'dps-link'; the key stays in az)
#   hsm-rbac      Managed HSM only: "Managed HSM Crypto User" on /keys/<key> for the app
#   issuing-csr   CSR for the issuing CA from the HSM key   -> $WORK/issuing.csr
#                 (certroll pki issuing-csr; sign it offline: certroll pki sign-issuing)
#   upload-ca     upload root + issuing CA (+ root CRL) to the PKI container
#                 (needs $WORK/issuing.pem and $WORK/root.pem signed offline)
#   verify-ca     upload the issuing CA to DPS and IoT Hub, verify proof of possession
#                 (certroll pki verification-cert, signed with the HSM key)
#   enrollment    create the DPS enrollment group that trusts the issuing CA
#   code          publish the function code (func, or zip deploy)
#   eventgrid     redeploy with functionCodeDeployed=true (Event Grid -> device_lifecycle)
#   crl           publish the first CRL with certroll
#
# WORK (default ./.certroll/deploy/<deployment>) holds the CSR and certificates.
set -euo pipefail
cd "$(dirname "$0")/.."

deployment=${1:?usage: scripts/post-deploy.sh <deployment-name> [step ...]}
shift
steps=("$@")
[[ ${#steps[@]} -eq 0 ]] && steps=(link-dps hsm-rbac issuing-csr upload-ca verify-ca enrollment code eventgrid crl)

WORK=${WORK:-.certroll/deploy/$deployment}
PY=${PY:-.venv/bin/python}
CERTROLL=${CERTROLL:-.venv/bin/certroll}
ENROLLMENT_GROUP=${ENROLLMENT_GROUP:-certroll-fleet}
CA_NAME=${CA_NAME:-certroll-issuing}
ISSUING_SUBJECT=${ISSUING_SUBJECT:-CN=certroll Issuing CA,O=certroll}
mkdir -p "$WORK"

out() { az deployment sub show --name "$deployment" --query "properties.outputs.$1.value" -o tsv; }
say() { printf '== %s\n' "$*"; }

RG=$(out AZURE_RESOURCE_GROUP)
LOCATION=$(out AZURE_LOCATION)
KEY_STORE=$(out CERTROLL_KEY_STORE)
KEY_ID=$(out CERTROLL_KEY_ID)
KEY_HOLDER=$(out KEYVAULT_NAME)
APP=$(out FUNCTION_APP_NAME)
APP_PRINCIPAL=$(out FUNCTION_APP_PRINCIPAL_ID)
PKI_ACCOUNT=$(out PKI_STORAGE_ACCOUNT_NAME)
PKI_CONTAINER=$(out PKI_CONTAINER_NAME)
PKI_BASE_URL=$(out PKI_BASE_URL)
ISSUING_BLOB=$(out ISSUING_CERT_BLOB_NAME)
HUB=$(out IOTHUB_NAME)
HUB_POLICY=$(out IOTHUB_DPS_LINK_POLICY)
DPS=$(out DPS_NAME)

# certroll with the deployment's issuing key (Key Vault / Managed HSM): the CSR and the
# proof-of-possession certificates are signed inside the HSM, the private key never leaves it.
certroll_hsm() {
  CERTROLL_KEY_BACKEND=keyvault CERTROLL_KEYVAULT_KEY_ID="$KEY_ID" "$CERTROLL" "$@"
}

# Writes the proof-of-possession certificate for a DPS / IoT Hub verification code.
verification_cert() { # <verification code> <out file>
  certroll_hsm pki verification-cert --ca-cert "$WORK/issuing.pem" --code "$1" --out "$2"
}

need_issuing_pem() {
  if [[ ! -s $WORK/issuing.pem ]]; then
    echo "missing $WORK/issuing.pem: sign $WORK/issuing.csr with the offline root (docs/deploy.md)," >&2
    echo "put the result and root.pem (and root.crl) in $WORK, then rerun: $0 $deployment ${steps[*]}" >&2
    exit 3
  fi
}

step_link_dps() {
  say "link IoT Hub $HUB to DPS $DPS"
  local host linked
  host=$(az iot hub show --name "$HUB" --resource-group "$RG" --query properties.hostName -o tsv)
  linked=$(az iot dps linked-hub list --dps-name "$DPS" --resource-group "$RG" --query "[?name=='$host'] | length(@)" -o tsv)
  if [[ $linked == 0 ]]; then
    # The connection string goes from one az call to the next; it is never printed or stored.
    az iot dps linked-hub create --dps-name "$DPS" --resource-group "$RG" --location "$LOCATION" \
      --connection-string "$(az iot hub connection-string show --hub-name "$HUB" --resource-group "$RG" \
        --policy-name "$HUB_POLICY" --key-type primary --query connectionString -o tsv)" \
      --output none
  fi
}

step_hsm_rbac() {
  [[ $KEY_STORE == managedhsm ]] || { say "hsm-rbac: Key Vault key, role assigned by Bicep"; return; }
  local key_name=${KEY_ID#*/keys/}; key_name=${key_name%%/*}
  say "Managed HSM Crypto User on /keys/$key_name for the Function App"
  az keyvault role assignment create --hsm-name "$KEY_HOLDER" --role "Managed HSM Crypto User" \
    --scope "/keys/$key_name" --assignee-object-id "$APP_PRINCIPAL" \
    --assignee-principal-type ServicePrincipal --output none
}

step_issuing_csr() {
  if [[ -s $WORK/issuing.csr ]]; then say "issuing CSR exists: $WORK/issuing.csr"; return; fi
  say "issuing CA CSR from $KEY_ID"
  certroll_hsm pki issuing-csr --subject "$ISSUING_SUBJECT" --out "$WORK/issuing.csr"
  echo "take $WORK/issuing.csr to the offline root: certroll pki sign-issuing (docs/deploy.md, step 3)"
}

upload() {
  az storage blob upload --auth-mode login --account-name "$PKI_ACCOUNT" \
    --container-name "$PKI_CONTAINER" --name "$1" --file "$2" --content-type "$3" \
    --overwrite --output none
}

step_upload_ca() {
  need_issuing_pem
  say "upload CA certificates to $PKI_BASE_URL"
  upload "$ISSUING_BLOB" "$WORK/issuing.pem" application/x-pem-file
  [[ -s $WORK/root.pem ]] && upload ca/root.pem "$WORK/root.pem" application/x-pem-file
  [[ -s $WORK/root.crl ]] && upload crl/root.crl "$WORK/root.crl" application/pkix-crl
  return 0
}

step_verify_ca() {
  need_issuing_pem
  local etag code
  say "issuing CA in IoT Hub $HUB (proof of possession)"
  az iot hub certificate show --hub-name "$HUB" --resource-group "$RG" --name "$CA_NAME" --output none 2>/dev/null ||
    az iot hub certificate create --hub-name "$HUB" --resource-group "$RG" --name "$CA_NAME" \
      --path "$WORK/issuing.pem" --output none
  if [[ $(az iot hub certificate show --hub-name "$HUB" --resource-group "$RG" --name "$CA_NAME" --query properties.isVerified -o tsv) != true ]]; then
    read -r etag code < <(az iot hub certificate generate-verification-code --hub-name "$HUB" \
      --resource-group "$RG" --name "$CA_NAME" --etag \
      "$(az iot hub certificate show --hub-name "$HUB" --resource-group "$RG" --name "$CA_NAME" --query etag -o tsv)" \
      --query "[etag, properties.verificationCode]" -o tsv | paste -sd' ')
    verification_cert "$code" "$WORK/hub-verification.pem"
    az iot hub certificate verify --hub-name "$HUB" --resource-group "$RG" --name "$CA_NAME" \
      --path "$WORK/hub-verification.pem" --etag "$etag" --output none
  fi

  say "issuing CA in DPS $DPS (proof of possession)"
  az iot dps certificate show --dps-name "$DPS" --resource-group "$RG" --certificate-name "$CA_NAME" --output none 2>/dev/null ||
    az iot dps certificate create --dps-name "$DPS" --resource-group "$RG" \
      --certificate-name "$CA_NAME" --path "$WORK/issuing.pem" --output none
  if [[ $(az iot dps certificate show --dps-name "$DPS" --resource-group "$RG" --certificate-name "$CA_NAME" --query properties.isVerified -o tsv) != true ]]; then
    read -r etag code < <(az iot dps certificate generate-verification-code --dps-name "$DPS" \
      --resource-group "$RG" --certificate-name "$CA_NAME" --etag \
      "$(az iot dps certificate show --dps-name "$DPS" --resource-group "$RG" --certificate-name "$CA_NAME" --query etag -o tsv)" \
      --query "[etag, properties.verificationCode]" -o tsv | paste -sd' ')
    verification_cert "$code" "$WORK/dps-verification.pem"
    az iot dps certificate verify --dps-name "$DPS" --resource-group "$RG" \
      --certificate-name "$CA_NAME" --path "$WORK/dps-verification.pem" --etag "$etag" --output none
  fi
}

step_enrollment() {
  say "DPS enrollment group $ENROLLMENT_GROUP (CA $CA_NAME)"
  az iot dps enrollment-group show --dps-name "$DPS" --resource-group "$RG" \
    --enrollment-id "$ENROLLMENT_GROUP" --output none 2>/dev/null ||
    az iot dps enrollment-group create --dps-name "$DPS" --resource-group "$RG" \
      --enrollment-id "$ENROLLMENT_GROUP" --ca-name "$CA_NAME" \
      --provisioning-status enabled --reprovision-policy reprovisionandmigratedata \
      --output none
}

step_code() {
  say "publish function code to $APP"
  if command -v func >/dev/null 2>&1; then
    func azure functionapp publish "$APP" --python
  else
    local zip="$WORK/app.zip"
    rm -f "$zip"
    zip -qr "$zip" function_app.py host.json requirements.txt functions shared \
      -x '*/__pycache__/*' '*.pyc'
    az functionapp deployment source config-zip --resource-group "$RG" --name "$APP" \
      --src "$zip" --build-remote true --output none
  fi
}

step_eventgrid() {
  say "Event Grid subscription to device_lifecycle (redeploy with functionCodeDeployed=true)"
  local template params
  template=$(az deployment sub show --name "$deployment" --query properties.parameters -o json)
  params="$WORK/parameters.json"
  "$PY" - "$template" "$params" <<'PYEOF'
import json, sys
values = {k: {"value": v["value"]} for k, v in json.loads(sys.argv[1]).items()}
values["functionCodeDeployed"] = {"value": True}
json.dump({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
           "contentVersion": "1.0.0.0", "parameters": values}, open(sys.argv[2], "w"), indent=2)
PYEOF
  az deployment sub create --name "$deployment" --location "$LOCATION" \
    --template-file infra/main.bicep --parameters "@$params" --output none
}

step_crl() {
  say "publish the first CRL"
  CERTROLL_KEY_BACKEND=keyvault CERTROLL_KEYVAULT_KEY_ID="$KEY_ID" \
  CERTROLL_ISSUING_CERT="$ISSUING_BLOB" CERTROLL_PKI_CONTAINER="$PKI_CONTAINER" \
  CERTROLL_CRL_BASE_URL="$PKI_BASE_URL" \
  CERTROLL_STORAGE__blobServiceUri="https://$PKI_ACCOUNT.blob.core.windows.net/" \
  CERTROLL_STORAGE__tableServiceUri="https://$(out STORAGE_ACCOUNT_NAME).table.core.windows.net/" \
  CERTROLL_STORAGE__queueServiceUri="https://$(out STORAGE_ACCOUNT_NAME).queue.core.windows.net/" \
    "$CERTROLL" crl
}

for step in "${steps[@]}"; do
  case $step in
    link-dps) step_link_dps ;;
    hsm-rbac) step_hsm_rbac ;;
    issuing-csr) step_issuing_csr ;;
    upload-ca) step_upload_ca ;;
    verify-ca) step_verify_ca ;;
    enrollment) step_enrollment ;;
    code) step_code ;;
    eventgrid) step_eventgrid ;;
    crl) step_crl ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
say "done"
