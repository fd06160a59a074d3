// Role assignments of the Function App's managed identity, each at the narrowest
// scope the code's operations need. Built-in role definition ids (Azure built-in
// roles, https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).

@description('Principal id of the Function App system-assigned identity.')
param principalId string

@allowed([
  'keyvault'
  'managedhsm'
])
@description('Where the issuing key lives (Managed HSM uses local RBAC, assigned by post-deploy.sh).')
param keyStore string

@description('Key Vault name (keyStore keyvault).')
param keyVaultName string

@description('Issuing key name.')
param issuingKeyName string

@description('Storage account of host storage, tables and queues.')
param storageAccountName string

@description('PKI storage account.')
param pkiStorageAccountName string

@description('PKI container.')
param pkiContainerName string

@description('DPS name.')
param dpsName string

@description('IoT Hub name.')
param iotHubName string

@description('Event Hubs namespace name.')
param eventHubNamespaceName string

@description('Event hub for TwinChangeEvents.')
param twinEventHubName string

@description('Event hub for the Connections resource log.')
param connectionsEventHubName string

@description('Event Grid custom topic name.')
param eventGridTopicName string

@description('Application Insights component name.')
param applicationInsightsName string

// Key Vault Crypto User: sign/verify with (and read) keys; no key management
var keyVaultCryptoUserRoleId = '12338af0-0e69-4776-bea7-57ae8d297424'
// Storage Blob Data Owner: host storage (leases, checkpoints, deployment package) needs Owner
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
// Storage Blob Data Contributor: write the CRL and CA chain into the PKI container
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
// Storage Queue Data Contributor: queue trigger and fan-out of rotation work
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
// Storage Table Data Contributor: rotation state, issuance ledger, audit log
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
// Device Provisioning Service Data Contributor: enrollments, groups, registration states
var dpsDataContributorRoleId = 'dfce44e4-17b7-4bd1-a6d1-04996ec95633'
// IoT Hub Data Contributor: identities, twins, direct methods and jobs (Registry and Twin
// Contributor together lack direct methods and jobs, which rotation needs)
var iotHubDataContributorRoleId = '4fc6c259-987e-4a07-842e-c321cc9d413f'
// Azure Event Hubs Data Receiver: the two Event Hub triggers
var eventHubsDataReceiverRoleId = 'a638d3c7-ab3a-418d-83e6-5f17a39d4fde'
// EventGrid Data Sender: publish certroll's domain events
var eventGridDataSenderRoleId = 'd5a91429-5739-47e2-a06b-3470a27159e7'
// Monitoring Metrics Publisher: Entra ID telemetry ingestion into Application Insights
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = if (keyStore == 'keyvault') {
  name: keyVaultName
}

resource issuingKey 'Microsoft.KeyVault/vaults/keys@2023-07-01' existing = if (keyStore == 'keyvault') {
  parent: vault
  name: issuingKeyName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource pkiStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: pkiStorageAccountName
}

resource pkiBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: pkiStorage
  name: 'default'
}

resource pkiContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: pkiBlobService
  name: pkiContainerName
}

resource dps 'Microsoft.Devices/provisioningServices@2022-12-12' existing = {
  name: dpsName
}

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' existing = {
  name: iotHubName
}

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName
}

resource twinHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: namespace
  name: twinEventHubName
}

resource connectionsHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: namespace
  name: connectionsEventHubName
}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' existing = {
  name: eventGridTopicName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource issuingKeyCryptoUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (keyStore == 'keyvault') {
  name: guid(issuingKey.id, principalId, keyVaultCryptoUserRoleId)
  scope: issuingKey
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultCryptoUserRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource storageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageBlobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource storageQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageQueueDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource storageTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageTableDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource pkiBlobContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(pkiContainer.id, principalId, storageBlobDataContributorRoleId)
  scope: pkiContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource dpsDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dps.id, principalId, dpsDataContributorRoleId)
  scope: dps
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', dpsDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource iotHubDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hub.id, principalId, iotHubDataContributorRoleId)
  scope: hub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', iotHubDataContributorRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource twinHubReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(twinHub.id, principalId, eventHubsDataReceiverRoleId)
  scope: twinHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource connectionsHubReceiver 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(connectionsHub.id, principalId, eventHubsDataReceiverRoleId)
  scope: connectionsHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataReceiverRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource topicSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, principalId, eventGridDataSenderRoleId)
  scope: topic
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventGridDataSenderRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisherRoleId)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}
