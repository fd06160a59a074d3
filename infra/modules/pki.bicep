// A small storage account that serves only the PKI objects relying parties fetch
// anonymously: the CRL and the CA certificates (CRL distribution point, AIA).
//
// Least privilege: anonymous read is confined to this account and to one container
// whose access level is 'Blob' (read a blob by its exact name; no listing). The
// function's own storage account keeps allowBlobPublicAccess false. Writes need
// Entra ID (shared-key access is off) and the function's identity holds Storage Blob
// Data Contributor on this container only.

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Unique suffix for resource names.')
param resourceToken string

@description('Name of the container that holds the CRL and CA chain.')
param pkiContainerName string

@allowed([
  'Enabled'
  'Disabled'
])
@description('Public network access of the PKI account (relying parties need it Enabled).')
param pkiPublicNetworkAccess string

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stpki${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_ZRS'
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    // Needed for the anonymous CRL download; only this account allows it.
    allowBlobPublicAccess: true
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: pkiPublicNetworkAccess
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 30
    }
  }
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: pkiContainerName
  properties: {
    publicAccess: 'Blob'
  }
}

output NAME string = account.name
output BLOB_ENDPOINT string = account.properties.primaryEndpoints.blob
output CONTAINER_URL string = '${account.properties.primaryEndpoints.blob}${container.name}'
