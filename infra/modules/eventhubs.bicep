// Event Hubs namespace with the two hubs the functions read: twin changes (IoT Hub
// route) and the hub's Connections resource log (Azure Monitor diagnostic setting).

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@minValue(1)
@maxValue(40)
@description('Throughput units.')
param capacity int

@description('Reject SAS tokens; clients authenticate with Entra ID.')
param disableLocalAuth bool

@description('Event hub for TwinChangeEvents.')
param twinEventHubName string

@description('Event hub for the Connections resource log.')
param connectionsEventHubName string

@description('Consumer group the functions read with.')
param consumerGroupName string

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the namespace.')
param publicNetworkAccess string

@minValue(1)
@maxValue(32)
@description('Partitions per hub (fixed after creation on the Standard tier). The Functions host runs one invocation per partition at a time, so this is how many batches of twin changes (and of connection records) are handled side by side.')
param partitionCount int = 8

@minValue(1)
@maxValue(7)
@description('Retention of events in days.')
param retentionInDays int = 1

var hubNames = [
  twinEventHubName
  connectionsEventHubName
]

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' = {
  name: 'evhns-${resourceToken}'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
    capacity: capacity
  }
  properties: {
    disableLocalAuth: disableLocalAuth
    minimumTlsVersion: '1.2'
    publicNetworkAccess: publicNetworkAccess
    isAutoInflateEnabled: false
  }
}

resource hubs 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' = [
  for hubName in hubNames: {
    parent: namespace
    name: hubName
    properties: {
      partitionCount: partitionCount
      messageRetentionInDays: retentionInDays
    }
  }
]

resource consumerGroups 'Microsoft.EventHub/namespaces/eventhubs/consumergroups@2024-01-01' = [
  for (hubName, i) in hubNames: {
    parent: hubs[i]
    name: consumerGroupName
  }
]

// Azure Monitor streams resource logs to Event Hubs through a namespace authorization
// rule (diagnostic settings take its resource id; no key is ever read or stored).
// Azure Monitor requires Manage, Send and Listen on the rule it is given.
resource exportRule 'Microsoft.EventHub/namespaces/authorizationRules@2024-01-01' = {
  parent: namespace
  name: 'azure-monitor-export'
  properties: {
    rights: [
      'Manage'
      'Send'
      'Listen'
    ]
  }
}

output NAMESPACE_NAME string = namespace.name
output EXPORT_AUTHORIZATION_RULE_ID string = exportRule.id
output CONSUMER_GROUP_NAME string = consumerGroupName
