// certroll: everything one environment needs, in one resource group.
// Deploy: az deployment sub create --location <region> --template-file infra/main.bicep \
//           --parameters infra/main.parameters.json
// See docs/deploy.md for the post-deploy steps (issuing CA, DPS link, code, Event Grid).
targetScope = 'subscription'

// ----------------------------------------------------------------------------- parameters

@minLength(1)
@maxLength(20)
@description('Short environment name (e.g. prod, staging); names the resource group and seeds resource names.')
param environmentName string

@minLength(1)
@description('Azure region for every resource (must offer Flex Consumption, IoT Hub and DPS).')
param location string

@description('Tags applied to every resource.')
param tags object = {}

@allowed([
  'keyvault'
  'managedhsm'
])
@description('Where the issuing CA key lives: a Key Vault Premium (HSM-backed key) or an existing, activated Managed HSM.')
param keyStore string = 'keyvault'

@description('Name of an existing, activated Managed HSM (only when keyStore is managedhsm).')
param managedHsmName string = ''

@description('Resource group of the existing Managed HSM (only when keyStore is managedhsm).')
param managedHsmResourceGroup string = ''

@minLength(1)
@maxLength(127)
@description('Name of the issuing CA key (EC P-384, sign/verify only).')
param issuingKeyName string = 'certroll-issuing'

@allowed([
  'S1'
  'S2'
  'S3'
])
@description('IoT Hub SKU (identity operations: 100/min/unit on S1 and S2, 5,000/min/unit on S3).')
param iotHubSku string = 'S1'

@minValue(1)
@description('IoT Hub units.')
param iotHubCapacity int = 1

@description('Fraction of each service limit a re-roll campaign leaves to the fleet\'s everyday traffic (docs/performance.md).')
param campaignHeadroom string = '0.1'

@minValue(1)
@maxValue(40)
@description('Event Hubs namespace throughput units.')
param eventHubsCapacity int = 1

@description('Disable SAS (local) authentication on the Event Hubs namespace; functions and the hub route use Entra ID. Azure Monitor export of the Connections log uses the namespace authorization rule id: set false only if your tenant rejects that export while local auth is off.')
param eventHubsDisableLocalAuth bool = true

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access for the back-end services (data storage, Key Vault, Event Hubs, Event Grid topic, Function App). Disabled needs private endpoints and VNet integration, which this template does not create.')
param publicNetworkAccess string = 'Enabled'

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access for the services devices talk to (IoT Hub, DPS).')
param devicePublicNetworkAccess string = 'Enabled'

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access for the PKI storage account that serves the CRL and CA certificates to relying parties.')
param pkiPublicNetworkAccess string = 'Enabled'

@description('Entra ID application (client) id of the operator API (scripts/post-deploy.sh app-registration creates it); it defines the operator app role and is the audience of operator tokens.')
param authClientId string

@description('Entra ID tenant id that issues the operator tokens.')
param authTenantId string = tenant().tenantId

@description('Audiences accepted for operator tokens (by the code and App Service Authentication); empty means api://<authClientId> and the client id itself.')
param authAllowedAudiences array = []

@description('Entra ID app role an operator needs for the devices API.')
param operatorRole string = 'Certroll.Operator'

@description('Set true only after checking that App Service Authentication runs in front of the app and strips client-sent X-MS-CLIENT-PRINCIPAL headers (Flex Consumption documentation has said it does not block unauthenticated callers); the code then also cross-checks that header with the bearer token it validates.')
param platformAuthEnforced bool = false

@description('True once the function code is published: creates the Event Grid subscription that delivers DeviceConnected/DeviceCreated to the device_lifecycle function (it must exist first).')
param functionCodeDeployed bool = false

@minValue(40)
@maxValue(1000)
@description('Flex Consumption: maximum instance count.')
param maximumInstanceCount int = 100

@allowed([
  512
  2048
  4096
])
@description('Flex Consumption: instance memory in MB.')
param instanceMemoryMB int = 2048

@minLength(3)
@maxLength(20)
@description('Prefix of the Table storage tables (state, ledger, ledger index, audit).')
param tablePrefix string = 'certroll'

@minLength(3)
@maxLength(56)
@description('Name of the rotation work queue (a -poison queue is created beside it).')
param workQueueName string = 'certroll-rotation'

@minLength(3)
@maxLength(63)
@description('Blob container that holds the CRL and the CA chain (public read of blobs, no listing).')
param pkiContainerName string = 'pki'

@description('Blob name of the issuing CA certificate (PEM) in the PKI container.')
param issuingCertBlobName string = 'ca/issuing.pem'

@description('Public base URL of the PKI container written into CRL distribution points; empty means the PKI account blob endpoint.')
param crlBaseUrl string = ''

@description('Event hub that receives TwinChangeEvents from the IoT Hub route.')
param twinEventHubName string = 'twin-changes'

@description('Event hub that receives the IoT Hub Connections resource log.')
param connectionsEventHubName string = 'connection-logs'

@description('NCRONTAB schedule (six fields, UTC) of the daily sweep.')
param sweepSchedule string = '0 0 3 * * *'

@minValue(1)
@maxValue(90)
@description('Validity of issued device certificates in days.')
param certValidityDays int = 30

@description('Fraction of the validity after which a certificate is renewed (0-1, as text).')
param renewalFraction string = '0.6667'

@description('Random jitter applied to the renewal point (fraction of the validity, as text).')
param renewalJitter string = '0.05'

@minValue(0)
@description('Back-dating of notBefore in seconds (clock skew on devices).')
param backdateSeconds int = 300

@minValue(1024)
@description('Largest CSR accepted, in bytes.')
param csrMaxBytes int = 8192

@minValue(1)
@description('Hours after which the sweep resumes a rotation that made no progress.')
param rotationDeadlineHours int = 24

@minValue(1)
@description('Days before a CA certificate expires that the sweep starts warning.')
param caWarningDays int = 90

@description('E-mail addresses the alert action group notifies (docs/operations.md).')
param alertEmailAddresses array = []

@secure()
@description('HTTPS webhook the alert action group calls (common alert schema); empty for none. Pass it at deployment, never in a parameters file.')
param alertWebhookUrl string = ''

@minValue(1)
@description('Rotation failures within an hour that fire the rotation-failure alert.')
param rotationFailureThreshold int = 1

@minValue(1)
@description('Throttled (429/503) service calls within 15 minutes that fire the throttle-storm alert.')
param throttleStormThreshold int = 100

// ----------------------------------------------------------------------------- names

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var allTags = union(tags, { 'azd-env-name': environmentName, application: 'certroll' })
var consumerGroupName = 'certroll'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-certroll-${environmentName}'
  location: location
  tags: allTags
}

// ----------------------------------------------------------------------------- modules

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    applicationInsightsName: monitoring.outputs.APPLICATION_INSIGHTS_NAME
    alertEmailAddresses: alertEmailAddresses
    alertWebhookUrl: alertWebhookUrl
    caWarningDays: caWarningDays
    rotationFailureThreshold: rotationFailureThreshold
    throttleStormThreshold: throttleStormThreshold
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    tablePrefix: tablePrefix
    workQueueName: workQueueName
    publicNetworkAccess: publicNetworkAccess
  }
}

module pki 'modules/pki.bicep' = {
  name: 'pki'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    pkiContainerName: pkiContainerName
    pkiPublicNetworkAccess: pkiPublicNetworkAccess
  }
}

module keyVault 'modules/keyvault.bicep' = if (keyStore == 'keyvault') {
  name: 'keyvault'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    issuingKeyName: issuingKeyName
    publicNetworkAccess: publicNetworkAccess
  }
}

module managedHsmKey 'modules/managedhsm-key.bicep' = if (keyStore == 'managedhsm') {
  name: 'managedhsm-key'
  scope: resourceGroup(empty(managedHsmResourceGroup) ? rg.name : managedHsmResourceGroup)
  params: {
    managedHsmName: managedHsmName
    issuingKeyName: issuingKeyName
  }
}

module eventHubs 'modules/eventhubs.bicep' = {
  name: 'eventhubs'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    capacity: eventHubsCapacity
    disableLocalAuth: eventHubsDisableLocalAuth
    twinEventHubName: twinEventHubName
    connectionsEventHubName: connectionsEventHubName
    consumerGroupName: consumerGroupName
    publicNetworkAccess: publicNetworkAccess
  }
}

module iotHub 'modules/iothub.bicep' = {
  name: 'iothub'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    sku: iotHubSku
    capacity: iotHubCapacity
    eventHubNamespaceName: eventHubs.outputs.NAMESPACE_NAME
    twinEventHubName: twinEventHubName
    connectionsEventHubName: connectionsEventHubName
    exportAuthorizationRuleId: eventHubs.outputs.EXPORT_AUTHORIZATION_RULE_ID
    logAnalyticsWorkspaceId: monitoring.outputs.LOG_ANALYTICS_WORKSPACE_ID
    devicePublicNetworkAccess: devicePublicNetworkAccess
  }
}

module dps 'modules/dps.bicep' = {
  name: 'dps'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    devicePublicNetworkAccess: devicePublicNetworkAccess
    logAnalyticsWorkspaceId: monitoring.outputs.LOG_ANALYTICS_WORKSPACE_ID
  }
}

module eventGrid 'modules/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    iotHubName: iotHub.outputs.NAME
    publicNetworkAccess: publicNetworkAccess
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    location: location
    tags: allTags
    resourceToken: resourceToken
    storageAccountName: storage.outputs.NAME
    deploymentContainerName: storage.outputs.DEPLOYMENT_CONTAINER_NAME
    pkiBlobEndpoint: pki.outputs.BLOB_ENDPOINT
    pkiContainerName: pkiContainerName
    crlBaseUrl: empty(crlBaseUrl) ? pki.outputs.CONTAINER_URL : crlBaseUrl
    applicationInsightsName: monitoring.outputs.APPLICATION_INSIGHTS_NAME
    keyId: keyStore == 'keyvault' ? keyVault!.outputs.KEY_ID : managedHsmKey!.outputs.KEY_ID
    issuingCertBlobName: issuingCertBlobName
    dpsServiceHostName: dps.outputs.SERVICE_HOST_NAME
    iotHubHostName: iotHub.outputs.HOST_NAME
    eventGridTopicEndpoint: eventGrid.outputs.TOPIC_ENDPOINT
    eventHubNamespaceName: eventHubs.outputs.NAMESPACE_NAME
    twinEventHubName: twinEventHubName
    connectionsEventHubName: connectionsEventHubName
    eventHubConsumerGroupName: eventHubs.outputs.CONSUMER_GROUP_NAME
    tablePrefix: tablePrefix
    workQueueName: workQueueName
    sweepSchedule: sweepSchedule
    certValidityDays: certValidityDays
    renewalFraction: renewalFraction
    renewalJitter: renewalJitter
    backdateSeconds: backdateSeconds
    csrMaxBytes: csrMaxBytes
    rotationDeadlineHours: rotationDeadlineHours
    caWarningDays: caWarningDays
    hubTier: iotHubSku
    hubUnits: iotHubCapacity
    campaignHeadroom: campaignHeadroom
    operatorRole: operatorRole
    authClientId: authClientId
    authTenantId: authTenantId
    authAllowedAudiences: authAllowedAudiences
    platformAuthEnforced: platformAuthEnforced
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    publicNetworkAccess: publicNetworkAccess
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  scope: rg
  params: {
    principalId: functionApp.outputs.PRINCIPAL_ID
    keyStore: keyStore
    keyVaultName: keyStore == 'keyvault' ? keyVault!.outputs.NAME : ''
    issuingKeyName: issuingKeyName
    storageAccountName: storage.outputs.NAME
    pkiStorageAccountName: pki.outputs.NAME
    pkiContainerName: pkiContainerName
    dpsName: dps.outputs.NAME
    iotHubName: iotHub.outputs.NAME
    eventHubNamespaceName: eventHubs.outputs.NAMESPACE_NAME
    twinEventHubName: twinEventHubName
    connectionsEventHubName: connectionsEventHubName
    eventGridTopicName: eventGrid.outputs.TOPIC_NAME
    applicationInsightsName: monitoring.outputs.APPLICATION_INSIGHTS_NAME
  }
}

module deviceLifecycleSubscription 'modules/eventgrid-subscription.bicep' = if (functionCodeDeployed) {
  name: 'eventgrid-subscription'
  scope: rg
  params: {
    systemTopicName: eventGrid.outputs.SYSTEM_TOPIC_NAME
    functionAppName: functionApp.outputs.NAME
  }
}

// ----------------------------------------------------------------------------- outputs

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output CERTROLL_KEY_STORE string = keyStore
output CERTROLL_KEY_ID string = keyStore == 'keyvault' ? keyVault!.outputs.KEY_ID : managedHsmKey!.outputs.KEY_ID
output KEYVAULT_NAME string = keyStore == 'keyvault' ? keyVault!.outputs.NAME : managedHsmName
output FUNCTION_APP_NAME string = functionApp.outputs.NAME
output FUNCTION_APP_PRINCIPAL_ID string = functionApp.outputs.PRINCIPAL_ID
output FUNCTION_APP_HOST_NAME string = functionApp.outputs.DEFAULT_HOST_NAME
output STORAGE_ACCOUNT_NAME string = storage.outputs.NAME
output PKI_STORAGE_ACCOUNT_NAME string = pki.outputs.NAME
output PKI_CONTAINER_NAME string = pkiContainerName
output PKI_BASE_URL string = empty(crlBaseUrl) ? pki.outputs.CONTAINER_URL : crlBaseUrl
output ISSUING_CERT_BLOB_NAME string = issuingCertBlobName
output IOTHUB_NAME string = iotHub.outputs.NAME
output IOTHUB_HOST_NAME string = iotHub.outputs.HOST_NAME
output IOTHUB_DPS_LINK_POLICY string = iotHub.outputs.DPS_LINK_POLICY_NAME
output DPS_NAME string = dps.outputs.NAME
output DPS_ID_SCOPE string = dps.outputs.ID_SCOPE
output DPS_SERVICE_HOST_NAME string = dps.outputs.SERVICE_HOST_NAME
output DPS_DEVICE_HOST_NAME string = dps.outputs.DEVICE_HOST_NAME
output EVENTGRID_TOPIC_ENDPOINT string = eventGrid.outputs.TOPIC_ENDPOINT
output EVENTHUB_NAMESPACE_NAME string = eventHubs.outputs.NAMESPACE_NAME
output ALERT_ACTION_GROUP_ID string = alerts.outputs.ACTION_GROUP_ID
