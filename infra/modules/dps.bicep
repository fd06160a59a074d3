// Device Provisioning Service. The link to the IoT Hub needs the hub's shared access
// policy connection string, which this template never reads: scripts/post-deploy.sh
// links the hub with the Azure CLI (idempotent; run it after every deployment).

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of DPS.')
param devicePublicNetworkAccess string

@description('Log Analytics workspace that receives the DPS logs.')
param logAnalyticsWorkspaceId string

resource dps 'Microsoft.Devices/provisioningServices@2022-12-12' = {
  name: 'provs-${resourceToken}'
  location: location
  tags: tags
  sku: {
    name: 'S1'
    capacity: 1
  }
  properties: {
    allocationPolicy: 'Hashed'
    publicNetworkAccess: devicePublicNetworkAccess
  }
}

resource logsToWorkspace 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'logs-to-workspace'
  scope: dps
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'allLogs'
        enabled: true
      }
    ]
  }
}

output NAME string = dps.name
output ID_SCOPE string = dps.properties.idScope
output SERVICE_HOST_NAME string = dps.properties.serviceOperationsHostName
output DEVICE_HOST_NAME string = dps.properties.deviceProvisioningHostName
