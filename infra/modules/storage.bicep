// The Function App's own storage account: host storage (leases, checkpoints, timers),
// the Flex Consumption deployment container, certroll's tables and its work queue.
// Entra ID only: shared-key access is off, so no connection string exists to leak.

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@description('Prefix of the state, ledger, ledger index and audit tables.')
param tablePrefix string

@description('Name of the rotation work queue.')
param workQueueName string

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the account.')
param publicNetworkAccess string

@description('Blob container that holds the Flex Consumption deployment package.')
param deploymentContainerName string = 'app-package'

var tableNames = [
  '${tablePrefix}state'
  '${tablePrefix}ledger'
  '${tablePrefix}ledgerindex'
  '${tablePrefix}audit'
  '${tablePrefix}campaigns'
]

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'st${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: publicNetworkAccess == 'Enabled' ? 'Allow' : 'Deny'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource workQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: workQueueName
}

// The Functions host moves a message here after maxDequeueCount failures (host.json).
resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: '${workQueueName}-poison'
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [
  for tableName in tableNames: {
    parent: tableService
    name: tableName
  }
]

output NAME string = account.name
output DEPLOYMENT_CONTAINER_NAME string = deploymentContainer.name
output WORK_QUEUE_NAME string = workQueue.name
output POISON_QUEUE_NAME string = poisonQueue.name
output TABLE_NAMES array = [for (name, i) in tableNames: tables[i].name]
