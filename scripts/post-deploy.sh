#!/usr/bin/env bash
# Post-deploy steps that Bicep cannot do (see docs/deploy.md). Idempotent: run it after
# every `az deployment sub create`.
#
#   scripts/post-deploy.sh <deployment-name> [step ...]
#
# Steps (default: all deployment steps, in this order):
#   app-registration  (before the first deployment too) the operator API's Entra ID app
#                 registration: app role Certroll.Operator, api://<client id>, v2 tokens, a
#                 user_impersonation scope pre-authorized for the Azure CLI, assignment
#                 required; writes the client id to $WORK/api-client-id (deploy.sh passes it
#                 as authClientId)
#   grant-operator  give the operator app role to each object id in $OPERATORS (users,
#                 groups, or service principals / managed identities of automations)
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
API_APP_NAME=${API_APP_NAME:-$deployment-api}
OPERATOR_ROLE=${OPERATOR_ROLE:-Certroll.Operator}
AZURE_CLI_APP_ID=04b07795-8ddb-461a-bbee-02f9e1bf7b46  # Microsoft's Azure CLI client
GRAPH=https://graph.microsoft.com/v1.0
mkdir -p "$WORK"

out() { az deployment sub show --name "$deployment" --query "properties.outputs.$1.value" -o tsv; }
say() { printf '== %s\n' "$*"; }

# The deployment's outputs; read only by the steps that need a deployment.
load_outputs() {
  [[ -n ${RG:-} ]] && return
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
}

# The operator API's client id: $API_CLIENT_ID, else the one app-registration wrote, else the
# deployment's authClientId parameter.
api_client_id() {
  if [[ -n ${API_CLIENT_ID:-} ]]; then echo "$API_CLIENT_ID"; return; fi
  if [[ -s $WORK/api-client-id ]]; then cat "$WORK/api-client-id"; return; fi
  az deployment sub show --name "$deployment" --query properties.parameters.authClientId.value -o tsv
}

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

step_app_registration() {
  local app_id object_id sp_id
  app_id=${API_CLIENT_ID:-$(az ad app list --display-name "$API_APP_NAME" --query "[0].appId" -o tsv)}
  if [[ -z $app_id ]]; then
    say "create the app registration $API_APP_NAME (operator API)"
    app_id=$(az ad app create --display-name "$API_APP_NAME" --sign-in-audience AzureADMyOrg \
      --query appId -o tsv)
  else
    say "app registration $API_APP_NAME: $app_id"
  fi
  object_id=$(az ad app show --id "$app_id" --query id -o tsv)
  az ad app show --id "$app_id" -o json >"$WORK/api-app.json"
  # Two PATCHes: the scope must exist before an application can be pre-authorized for it.
  # Ids of an existing role or scope are kept (Graph refuses to change an enabled one).
  "$PY" - "$WORK/api-app.json" "$OPERATOR_ROLE" "$AZURE_CLI_APP_ID" "$WORK" <<'PYEOF'
import json, sys, uuid
app, role_value, cli_app, work = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3], sys.argv[4]
roles = list(app.get("appRoles") or [])
if not any(r.get("value") == role_value for r in roles):
    roles.append({"id": str(uuid.uuid4()), "value": role_value, "isEnabled": True,
                  "allowedMemberTypes": ["User", "Application"],
                  "displayName": "certroll operator",
                  "description": "Disallow, allow, renew and inspect devices through the certroll API"})
api = app.get("api") or {}
scopes = list(api.get("oauth2PermissionScopes") or [])
scope = next((s for s in scopes if s.get("value") == "user_impersonation"), None)
if scope is None:
    text = "Call the certroll operator API as the signed-in user (the app role still decides)"
    scope = {"id": str(uuid.uuid4()), "value": "user_impersonation", "type": "User",
             "isEnabled": True, "adminConsentDisplayName": "Access certroll",
             "adminConsentDescription": text, "userConsentDisplayName": "Access certroll",
             "userConsentDescription": text}
    scopes.append(scope)
uris = list(app.get("identifierUris") or [])
if f"api://{app['appId']}" not in uris:
    uris.append(f"api://{app['appId']}")
first = {"identifierUris": uris, "appRoles": roles,
         "api": {"requestedAccessTokenVersion": 2, "oauth2PermissionScopes": scopes,
                 "preAuthorizedApplications": api.get("preAuthorizedApplications") or []}}
pre = [p for p in first["api"]["preAuthorizedApplications"] if p.get("appId") != cli_app]
pre.append({"appId": cli_app, "delegatedPermissionIds": [scope["id"]]})
second = {"api": {**first["api"], "preAuthorizedApplications": pre}}
json.dump(first, open(f"{work}/api-app-patch1.json", "w"))
json.dump(second, open(f"{work}/api-app-patch2.json", "w"))
PYEOF
  for patch in api-app-patch1 api-app-patch2; do
    az rest --method PATCH --uri "$GRAPH/applications/$object_id" \
      --headers Content-Type=application/json --body "@$WORK/$patch.json" --output none
  done
  az ad sp show --id "$app_id" --output none 2>/dev/null || az ad sp create --id "$app_id" --output none
  sp_id=$(az ad sp show --id "$app_id" --query id -o tsv)
  # Only users, groups and apps given a role can get a token for the API at all.
  az rest --method PATCH --uri "$GRAPH/servicePrincipals/$sp_id" \
    --headers Content-Type=application/json --body '{"appRoleAssignmentRequired": true}' --output none
  echo "$app_id" >"$WORK/api-client-id"
  say "operator API client id $app_id (authClientId); audiences api://$app_id and $app_id"
}

step_grant_operator() {
  local app_id sp_id role_id principal assigned
  app_id=$(api_client_id)
  sp_id=$(az ad sp show --id "$app_id" --query id -o tsv)
  role_id=$(az ad sp show --id "$app_id" --query "appRoles[?value=='$OPERATOR_ROLE'].id | [0]" -o tsv)
  [[ -n $role_id ]] || { echo "no app role $OPERATOR_ROLE on $app_id: run app-registration" >&2; exit 3; }
  for principal in ${OPERATORS:?set OPERATORS to object ids of users, groups or service principals}; do
    assigned=$(az rest --method GET --uri "$GRAPH/servicePrincipals/$sp_id/appRoleAssignedTo" \
      --query "value[?principalId=='$principal' && appRoleId=='$role_id'] | length(@)" -o tsv)
    if [[ $assigned != 0 ]]; then say "$principal already holds $OPERATOR_ROLE"; continue; fi
    say "give $OPERATOR_ROLE to $principal"
    az rest --method POST --uri "$GRAPH/servicePrincipals/$sp_id/appRoleAssignedTo" \
      --headers Content-Type=application/json --output none \
      --body "{\"principalId\": \"$principal\", \"resourceId\": \"$sp_id\", \"appRoleId\": \"$role_id\"}"
  done
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
    app-registration|grant-operator) ;;
    *) load_outputs ;;
  esac
  case $step in
    app-registration) step_app_registration ;;
    grant-operator) step_grant_operator ;;
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
