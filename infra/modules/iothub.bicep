// IoT Hub: X.509 devices only (device and module SAS off), TwinChangeEvents routed to
// an Event Hub through an identity-based endpoint, the Connections log streamed to a
// second Event Hub (401003 / 403012 records for reconciliation).

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@allowed([
  'S1'
  'S2'
  'S3'
])
@description('IoT Hub SKU.')
param sku string

@minValue(1)
@description('IoT Hub units.')
param capacity int

@description('Event Hubs namespace that receives the route and the log stream.')
param eventHubNamespaceName string

@description('Event hub for TwinChangeEvents.')
param twinEventHubName string

@description('Event hub for the Connections resource log.')
param connectionsEventHubName string

@description('Resource id of the namespace authorization rule Azure Monitor streams through.')
param exportAuthorizationRuleId string

@description('Log Analytics workspace that receives every hub log as well.')
param logAnalyticsWorkspaceId string

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the hub.')
param devicePublicNetworkAccess string

// Azure Event Hubs Data Sender: send events to an event hub
var eventHubsDataSenderRoleId = '2b629674-e913-4c01-ae53-ef4638d8f975'

var dpsLinkPolicyName = 'dps-link'

resource namespace 'Microsoft.EventHub/namespaces@2024-01-01' existing = {
  name: eventHubNamespaceName
}

resource twinHub 'Microsoft.EventHub/namespaces/eventhubs@2024-01-01' existing = {
  parent: namespace
  name: twinEventHubName
}

// A user-assigned identity lets the sender role exist before the hub validates its
// routing endpoint (a system-assigned identity would only exist after the hub).
resource routingIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-iothub-routing-${resourceToken}'
  location: location
  tags: tags
}

resource routingSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(twinHub.id, routingIdentity.id, eventHubsDataSenderRoleId)
  scope: twinHub
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', eventHubsDataSenderRoleId)
    principalId: routingIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' = {
  name: 'iot-${resourceToken}'
  location: location
  tags: tags
  sku: {
    name: sku
    capacity: capacity
  }
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${routingIdentity.id}': {}
    }
  }
  properties: {
    minTlsVersion: '1.2'
    publicNetworkAccess: devicePublicNetworkAccess
    // Devices authenticate with X.509 only.
    disableDeviceSAS: true
    disableModuleSAS: true
    // The DPS linked-hub connection is a hub shared access policy, so hub-level SAS
    // stays available for that one narrow policy; certroll itself uses Entra ID.
    disableLocalAuth: false
    authorizationPolicies: [
      {
        keyName: dpsLinkPolicyName
        rights: 'RegistryWrite, ServiceConnect, DeviceConnect'
      }
    ]
    eventHubEndpoints: {
      events: {
        retentionTimeInDays: 1
        partitionCount: 4
      }
    }
    routing: {
      endpoints: {
        eventHubs: [
          {
            name: 'twin-changes'
            authenticationType: 'identityBased'
            identity: {
              userAssignedIdentity: routingIdentity.id
            }
            endpointUri: 'sb://${eventHubNamespaceName}.servicebus.windows.net'
            entityPath: twinEventHubName
            subscriptionId: subscription().subscriptionId
            resourceGroup: resourceGroup().name
          }
        ]
      }
      routes: [
        {
          name: 'twin-changes'
          source: 'TwinChangeEvents'
          // Device twins only: a module twin's change carries the parent's device id and
          // the system property iothub-connection-module-id ($connectionModuleId in a
          // routing query, iot-hub-devguide-routing-query-syntax.md). A module must not
          // speak for its device; the function ignores such events too.
          condition: 'NOT is_defined($connectionModuleId)'
          endpointNames: [
            'twin-changes'
          ]
          isEnabled: true
        }
      ]
      // Device telemetry keeps flowing to the built-in endpoint.
      fallbackRoute: {
        name: '$fallback'
        source: 'DeviceMessages'
        condition: 'true'
        endpointNames: [
          'events'
        ]
        isEnabled: true
      }
    }
  }
  dependsOn: [
    routingSender
  ]
}

resource connectionsToEventHub 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'connections-to-eventhub'
  scope: hub
  properties: {
    eventHubAuthorizationRuleId: exportAuthorizationRuleId
    eventHubName: connectionsEventHubName
    logs: [
      {
        category: 'Connections'
        enabled: true
      }
    ]
  }
}

resource logsToWorkspace 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs-to-workspace'
  scope: hub
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
    metrics: [
      {
        category: 'AllMetrics'
        enabled: true
      }
    ]
  }
}

output NAME string = hub.name
output ID string = hub.id
output HOST_NAME string = hub.properties.hostName
output DPS_LINK_POLICY_NAME string = dpsLinkPolicyName
