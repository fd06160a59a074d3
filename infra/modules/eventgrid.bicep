// Event Grid: the IoT Hub's system topic (DeviceConnected / DeviceCreated reach the
// device_lifecycle function; see eventgrid-subscription.bicep) and the custom topic
// certroll publishes its own domain events to (Entra ID only).

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@description('Name of the IoT Hub whose events the system topic carries.')
param iotHubName string

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the custom topic.')
param publicNetworkAccess string

resource hub 'Microsoft.Devices/IotHubs@2023-06-30' existing = {
  name: iotHubName
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: 'evgst-iot-${resourceToken}'
  location: location
  tags: tags
  properties: {
    source: hub.id
    topicType: 'Microsoft.Devices.IoTHubs'
  }
}

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  name: 'evgt-certroll-${resourceToken}'
  location: location
  tags: tags
  properties: {
    // The schema shared/adapters/eventgrid.py publishes (INPUT_SCHEMA); a topic with
    // another input schema refuses its events.
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    publicNetworkAccess: publicNetworkAccess
  }
}

output SYSTEM_TOPIC_NAME string = systemTopic.name
output TOPIC_NAME string = topic.name
output TOPIC_ENDPOINT string = topic.properties.endpoint
