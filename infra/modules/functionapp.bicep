// The Function App on the Flex Consumption plan: Python 3.11, system-assigned managed
// identity for every connection (host storage, deployment package, Event Hubs, queues,
// tables, blobs, Key Vault, DPS, IoT Hub, Event Grid, Application Insights), Entra ID
// token validation settings for the HTTP API (and App Service Authentication in front of
// it where the plan supports it). No secret in any setting: identity-based connections (NAME__serviceUri + __credential) only.

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@description('Storage account for host storage, the deployment package, tables and queues.')
param storageAccountName string

@description('Blob container of the deployment package.')
param deploymentContainerName string

@description('Blob endpoint of the PKI storage account (https://<account>.blob.core.windows.net/).')
param pkiBlobEndpoint string

@description('Container of the CRL and CA chain.')
param pkiContainerName string

@description('Public base URL of the PKI container for CRL distribution points.')
param crlBaseUrl string

@description('Application Insights component name.')
param applicationInsightsName string

@description('Issuing key id with version (Key Vault or Managed HSM).')
param keyId string

@description('Blob name of the issuing CA certificate in the PKI container.')
param issuingCertBlobName string

@description('DPS service operations host name.')
param dpsServiceHostName string

@description('IoT Hub host name.')
param iotHubHostName string


@description('Endpoint of the outbound Event Grid custom topic.')
param eventGridTopicEndpoint string

@description('Event Hubs namespace name.')
param eventHubNamespaceName string

@description('Event hub for TwinChangeEvents.')
param twinEventHubName string

@description('Event hub for the Connections resource log.')
param connectionsEventHubName string

@description('Consumer group the Event Hub triggers read with (created by eventhubs.bicep).')
param eventHubConsumerGroupName string

@description('Prefix of the Table storage tables.')
param tablePrefix string

@description('Rotation work queue.')
param workQueueName string

@description('NCRONTAB schedule of the daily sweep.')
param sweepSchedule string

@description('Validity of issued certificates in days.')
param certValidityDays int

@description('Renewal point as a fraction of the validity.')
param renewalFraction string

@description('Renewal jitter as a fraction of the validity.')
param renewalJitter string

@description('Back-dating of notBefore in seconds.')
param backdateSeconds int

@description('Largest CSR accepted, in bytes.')
param csrMaxBytes int

@description('Hours before the sweep resumes a stuck rotation.')
param rotationDeadlineHours int

@description('Days before CA expiry that the sweep warns.')
param caWarningDays int

@description('IoT Hub SKU the campaigns are paced for (the budget planner).')
param hubTier string

@description('IoT Hub units the campaigns are paced for.')
param hubUnits int

@description('Fraction of each service limit a campaign leaves to everyday traffic.')
param campaignHeadroom string

@description('Entra ID app role required by the devices API.')
param operatorRole string

@description('Entra ID application (client) id validated by App Service Authentication.')
param authClientId string

@description('Entra ID tenant id.')
param authTenantId string

@description('Accepted audiences; empty means api://<authClientId> and the client id.')
param authAllowedAudiences array

@description('True only where App Service Authentication is verified to run in front of the app and strip client-sent X-MS-CLIENT-PRINCIPAL headers; the code then also requires that header to match the bearer token.')
param platformAuthEnforced bool

@description('Flex Consumption: maximum instance count.')
param maximumInstanceCount int

@description('Flex Consumption: instance memory in MB.')
param instanceMemoryMB int

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the Function App.')
param publicNetworkAccess string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

var audiences = empty(authAllowedAudiences) ? [
  'api://${authClientId}'
  authClientId
] : authAllowedAudiences

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: 'plan-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: 'func-certroll-${resourceToken}'
  location: location
  tags: union(tags, { 'azd-service-name': 'certroll' })
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    publicNetworkAccess: publicNetworkAccess
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
      appSettings: [
        // Functions host storage (Flex Consumption; identity-based).
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        // Telemetry: connection string holds only the ingestion endpoint and the
        // (non-secret) instrumentation key; ingestion itself requires Entra ID.
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: appInsights.properties.ConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'Authorization=AAD'
        }
        // Event Hub triggers twin_changes and connection_failures.
        {
          name: 'CERTROLL_EVENTHUB__fullyQualifiedNamespace'
          value: '${eventHubNamespaceName}.servicebus.windows.net'
        }
        {
          name: 'CERTROLL_EVENTHUB__credential'
          value: 'managedidentity'
        }
        {
          name: 'CERTROLL_TWIN_EVENTHUB'
          value: twinEventHubName
        }
        {
          name: 'CERTROLL_CONNECTIONS_EVENTHUB'
          value: connectionsEventHubName
        }
        {
          name: 'CERTROLL_EVENTHUB_CONSUMER_GROUP'
          value: eventHubConsumerGroupName
        }
        // certroll's storage: queue trigger, tables (state, ledger, audit), PKI blobs.
        {
          name: 'CERTROLL_STORAGE__queueServiceUri'
          value: storage.properties.primaryEndpoints.queue
        }
        {
          name: 'CERTROLL_STORAGE__tableServiceUri'
          value: storage.properties.primaryEndpoints.table
        }
        {
          name: 'CERTROLL_STORAGE__blobServiceUri'
          value: pkiBlobEndpoint
        }
        {
          name: 'CERTROLL_STORAGE__credential'
          value: 'managedidentity'
        }
        {
          name: 'CERTROLL_TABLE_PREFIX'
          value: tablePrefix
        }
        {
          name: 'CERTROLL_WORK_QUEUE'
          value: workQueueName
        }
        {
          name: 'CERTROLL_PKI_CONTAINER'
          value: pkiContainerName
        }
        {
          name: 'CERTROLL_CRL_BASE_URL'
          value: crlBaseUrl
        }
        // Scratch space (the package mount is read-only).
        {
          name: 'CERTROLL_HOME'
          value: '/tmp/certroll'
        }
        // Issuing CA.
        {
          name: 'CERTROLL_KEY_BACKEND'
          value: 'keyvault'
        }
        {
          name: 'CERTROLL_KEYVAULT_KEY_ID'
          value: keyId
        }
        {
          name: 'CERTROLL_ISSUING_CERT'
          value: issuingCertBlobName
        }
        // Fleet services.
        {
          name: 'CERTROLL_DPS_ENDPOINT'
          value: 'https://${dpsServiceHostName}'
        }
        {
          name: 'CERTROLL_IOTHUB_HOST'
          value: iotHubHostName
        }
        {
          name: 'CERTROLL_EVENTGRID_TOPIC_ENDPOINT'
          value: eventGridTopicEndpoint
        }
        // Timer trigger daily_sweep.
        {
          name: 'CERTROLL_SWEEP_SCHEDULE'
          value: sweepSchedule
        }
        // Issuance and rotation policy.
        {
          name: 'CERTROLL_CERT_VALIDITY_DAYS'
          value: string(certValidityDays)
        }
        {
          name: 'CERTROLL_RENEWAL_FRACTION'
          value: renewalFraction
        }
        {
          name: 'CERTROLL_RENEWAL_JITTER'
          value: renewalJitter
        }
        {
          name: 'CERTROLL_BACKDATE_SECONDS'
          value: string(backdateSeconds)
        }
        {
          name: 'CERTROLL_CSR_MAX_BYTES'
          value: string(csrMaxBytes)
        }
        {
          name: 'CERTROLL_ROTATION_DEADLINE_HOURS'
          value: string(rotationDeadlineHours)
        }
        {
          name: 'CERTROLL_CA_WARNING_DAYS'
          value: string(caWarningDays)
        }
        // campaigns: paced by the budget planner for this hub and the one DPS instance
        {
          name: 'CERTROLL_HUB_TIER'
          value: hubTier
        }
        {
          name: 'CERTROLL_HUB_UNITS'
          value: string(hubUnits)
        }
        {
          name: 'CERTROLL_DPS_INSTANCES'
          value: '1'
        }
        {
          name: 'CERTROLL_CAMPAIGN_HEADROOM'
          value: campaignHeadroom
        }
        // HTTP API devices_api: Entra ID access tokens validated in code (signing keys from
        // the tenant's OpenID configuration), the operator app role in their roles claim.
        {
          name: 'CERTROLL_OPERATOR_ROLE'
          value: operatorRole
        }
        {
          name: 'CERTROLL_AUTH_TENANT_ID'
          value: authTenantId
        }
        {
          name: 'CERTROLL_AUTH_AUDIENCES'
          value: join(audiences, ',')
        }
        {
          name: 'CERTROLL_AUTH_METADATA_URL'
          value: '${environment().authentication.loginEndpoint}${authTenantId}/v2.0/.well-known/openid-configuration'
        }
        {
          name: 'CERTROLL_PLATFORM_AUTH_ENFORCED'
          value: platformAuthEnforced ? 'true' : 'false'
        }
      ]
    }
  }
}

// No publishing with user names and passwords: deployments use Entra ID.
resource scmBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource ftpBasicAuth 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

// App Service Authentication, where the plan runs it: every HTTP request needs an Entra ID
// token for this application (401 otherwise) in addition to the function key. The code
// does not rely on it (Flex Consumption's documentation has said unauthenticated callers
// are not blocked): the devices API validates the bearer token itself and reads the
// principal header only when platformAuthEnforced says so. The Event Grid extension
// webhook is excluded, in both casings Azure uses for it (/runtime/webhooks/eventgrid in
// the Functions documentation, /runtime/webhooks/EventGrid in Event Grid's): Event Grid
// authenticates to it with the extension's system key.
resource auth 'Microsoft.Web/sites/config@2024-04-01' = {
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
      excludedPaths: [
        '/runtime/webhooks/eventgrid'
        '/runtime/webhooks/EventGrid'
      ]
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${authTenantId}/v2.0'
        }
        validation: {
          allowedAudiences: audiences
        }
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
    httpSettings: {
      requireHttps: true
    }
  }
}

output NAME string = site.name
output ID string = site.id
output PRINCIPAL_ID string = site.identity.principalId
output DEFAULT_HOST_NAME string = site.properties.defaultHostName
