// Delivers the IoT Hub's DeviceConnected and DeviceCreated events to the
// device_lifecycle function (Azure Function endpoint type: Event Grid calls the
// function through its resource id, no webhook key handling). Event Grid validates
// that the function exists, so main.bicep deploys this only with
// functionCodeDeployed=true, after the code is published.

@description('Name of the IoT Hub system topic.')
param systemTopicName string

@description('Name of the Function App.')
param functionAppName string

@description('Name of the Event Grid triggered function.')
param functionName string = 'device_lifecycle'

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource site 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource deviceLifecycle 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'device-lifecycle'
  properties: {
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${site.id}/functions/${functionName}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Devices.DeviceConnected'
        'Microsoft.Devices.DeviceCreated'
      ]
    }
    eventDeliverySchema: 'EventGridSchema'
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
  }
}

output NAME string = deviceLifecycle.name
